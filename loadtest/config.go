package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared/xks"
)

// ErrConfigValidation is wrapped by every configuration error.
var ErrConfigValidation = errors.New("loadtest: invalid configuration")

// Operations the generator can drive.
const (
	OpEncrypt = "encrypt"
	OpDecrypt = "decrypt"
	OpMixed   = "mixed"
)

// Bounds that keep a run finite whatever the flags say.
const (
	maxDuration    = time.Hour
	maxConcurrency = 4096
	maxRate        = 100_000
	maxPlaintext   = 64 << 10
)

// Config is one load run.
type Config struct {
	URL         string // https://127.0.0.1:8443
	CAFile      string // PEM trust anchor; empty = system roots
	Prefix      string // key store URI prefix
	AccessKeyID string
	Secret      string
	KeyID       string

	Op       string // encrypt | decrypt | mixed
	Size     int    // plaintext bytes
	AADSize  int    // additionalAuthenticatedData bytes
	PoolSize int    // pre-encrypted ciphertexts for decrypt

	Concurrency int     // closed loop callers; open loop: unused
	Rate        float64 // open loop requests/s; 0 = closed loop
	MaxInFlight int     // open loop: most requests outstanding at once

	Duration    time.Duration // measured
	Warmup      time.Duration // before Duration, not measured
	MaxRequests int64         // safety cap on requests sent, warmup included
	Timeout     time.Duration // per request

	JSONFile    string
	GoalRPS     float64
	GoalP99     time.Duration
	AllowRemote bool
}

// OpenLoop reports whether requests are sent at a fixed rate.
func (c Config) OpenLoop() bool { return c.Rate > 0 }

// credsFile is the JSON `sovkeys xks keystore create` prints.
type credsFile struct {
	URIPrefix       string `json:"uriPrefix"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

const usageHeader = `loadtest - SigV4-signed XKS load against a sovkeys gateway

  loadtest -ca DATA/tls/ca.pem -creds-json ks.json -key KEYID [-op encrypt|decrypt|mixed]
           (-concurrency N | -rate R) [-duration 60s] [-warmup 5s] [-json out.json]
           [-goal-rps 1800 -goal-p99 25ms]

Closed loop (-concurrency) keeps N requests outstanding; open loop (-rate)
sends R requests/s on a fixed schedule and measures latency from each
request's intended send time. The secret may also come from
SOVKEYS_XKS_SECRET. Only loopback targets unless -allow-remote.

Flags:
`

// parseConfig reads flags (and SOVKEYS_XKS_SECRET through getenv).
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHeader)
		fs.PrintDefaults()
	}
	var c Config
	var credsJSON string
	fs.StringVar(&c.URL, "url", "https://127.0.0.1:8443", "gateway base URL")
	fs.StringVar(&c.CAFile, "ca", "", "PEM file of the gateway's trust anchor (e.g. DATA/tls/ca.pem)")
	fs.StringVar(&c.Prefix, "prefix", "", "key store URI prefix (default: uriPrefix of -creds-json)")
	fs.StringVar(&c.AccessKeyID, "access-key-id", "", "key store SigV4 access key id")
	fs.StringVar(&c.Secret, "secret", getenv("SOVKEYS_XKS_SECRET"), "key store SigV4 secret (env SOVKEYS_XKS_SECRET)")
	fs.StringVar(&credsJSON, "creds-json", "", "JSON `FILE` printed by 'sovkeys xks keystore create' (prefix, access key id, secret)")
	fs.StringVar(&c.KeyID, "key", "", "XKS key id (required)")
	fs.StringVar(&c.Op, "op", OpEncrypt, "encrypt | decrypt | mixed (half each)")
	fs.IntVar(&c.Size, "size", 1024, "plaintext bytes")
	fs.IntVar(&c.AADSize, "aad", 0, "additionalAuthenticatedData bytes")
	fs.IntVar(&c.PoolSize, "pool", 256, "ciphertexts encrypted before a decrypt or mixed run")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "closed loop: requests outstanding at once")
	fs.Float64Var(&c.Rate, "rate", 0, "open loop: requests per second (replaces -concurrency)")
	fs.IntVar(&c.MaxInFlight, "max-inflight", 512, "open loop: most requests outstanding at once")
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "measured run time (at most 1h)")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "unmeasured load before the measured run")
	fs.Int64Var(&c.MaxRequests, "max-requests", 2_000_000, "safety cap on requests sent, warmup included")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.StringVar(&c.JSONFile, "json", "", "also write the report as JSON to this file")
	fs.Float64Var(&c.GoalRPS, "goal-rps", 0, "verdict: required throughput in requests/s")
	fs.DurationVar(&c.GoalP99, "goal-p99", 0, "verdict: largest acceptable p99 latency")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("%w: unexpected argument %q", ErrConfigValidation, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["rate"] && set["concurrency"] {
		return Config{}, fmt.Errorf("%w: -concurrency (closed loop) and -rate (open loop) exclude each other", ErrConfigValidation)
	}
	if credsJSON != "" {
		if err := c.applyCreds(credsJSON, set); err != nil {
			return Config{}, err
		}
	}
	return c, c.Validate()
}

// applyCreds fills what the flags left unset from a creds JSON file.
func (c *Config) applyCreds(path string, set map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: -creds-json: %v", ErrConfigValidation, err)
	}
	var f credsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%w: -creds-json %s: %v", ErrConfigValidation, path, err)
	}
	if !set["prefix"] {
		c.Prefix = f.URIPrefix
	}
	if !set["access-key-id"] {
		c.AccessKeyID = f.AccessKeyID
	}
	if !set["secret"] {
		c.Secret = f.SecretAccessKey
	}
	return nil
}

// Validate checks c; every error wraps ErrConfigValidation.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfigValidation}, args...)...)
	}
	u, err := url.Parse(c.URL)
	switch {
	case err != nil:
		return bad("-url: %v", err)
	case u.Scheme != "https" || u.Host == "":
		return bad("-url must be https://host:port")
	case u.Path != "" && u.Path != "/":
		return bad("-url takes no path; the key store goes in -prefix")
	}
	if !c.AllowRemote && !isLoopbackHost(u.Hostname()) {
		return bad("-url host %q is not a loopback address; pass -allow-remote to load a remote gateway", u.Hostname())
	}
	prefix := strings.Trim(c.Prefix, "/")
	switch {
	case prefix != "" && !xks.ValidPrefix(prefix):
		return bad("-prefix %q is not a valid key store prefix", c.Prefix)
	case c.AccessKeyID == "" || c.Secret == "":
		return bad("credentials required: -creds-json FILE, or -access-key-id and -secret")
	case c.KeyID == "" || !xks.ValidKeyID(c.KeyID):
		return bad("-key: a key id of 1-128 characters of [A-Za-z0-9_-] is required")
	}
	switch c.Op {
	case OpEncrypt, OpDecrypt, OpMixed:
	default:
		return bad("-op must be encrypt, decrypt or mixed")
	}
	switch {
	case c.Size < 1 || c.Size > maxPlaintext:
		return bad("-size must be in [1, %d]", maxPlaintext)
	case c.AADSize < 0 || c.AADSize > maxPlaintext:
		return bad("-aad must be in [0, %d]", maxPlaintext)
	case c.Op != OpEncrypt && (c.PoolSize < 1 || c.PoolSize > 100_000):
		return bad("-pool must be in [1, 100000]")
	case c.Rate < 0 || c.Rate > maxRate:
		return bad("-rate must be in [0, %d]", maxRate)
	case !c.OpenLoop() && (c.Concurrency < 1 || c.Concurrency > maxConcurrency):
		return bad("-concurrency must be in [1, %d]", maxConcurrency)
	case c.OpenLoop() && (c.MaxInFlight < 1 || c.MaxInFlight > maxConcurrency):
		return bad("-max-inflight must be in [1, %d]", maxConcurrency)
	case c.Duration <= 0 || c.Duration > maxDuration:
		return bad("-duration must be in (0, %s]", maxDuration)
	case c.Warmup < 0 || c.Warmup > maxDuration:
		return bad("-warmup must be in [0, %s]", maxDuration)
	case c.MaxRequests < 1:
		return bad("-max-requests must be positive")
	case c.Timeout <= 0 || c.Timeout > time.Minute:
		return bad("-timeout must be in (0, 1m]")
	case c.GoalRPS < 0 || c.GoalP99 < 0:
		return bad("-goal-rps and -goal-p99 must not be negative")
	}
	return nil
}

// isLoopbackHost accepts "localhost" and loopback IP literals only: a name
// that merely resolves to loopback today is still refused.
func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// workers is how many goroutines send requests.
func (c Config) workers() int {
	if c.OpenLoop() {
		return c.MaxInFlight
	}
	return c.Concurrency
}
