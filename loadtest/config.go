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
	"slices"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/loadtest/chart"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

// ErrConfigValidation is wrapped by every configuration error.
var ErrConfigValidation = errors.New("loadtest: invalid configuration")

// APIs the generator can load.
const (
	APIXKS = "xks" // AWS KMS External Key Store proxy API, SigV4
	APIVS  = "vs"  // instance volume secrets, mutual TLS
	// APIAudit publishes audit events straight to the event stream, as the
	// services do, and measures how fast the running audit services number
	// and export them.
	APIAudit = "audit"
)

// Operations the generator can drive. decrypt and mixed exist in both APIs;
// encrypt is XKS only, generate is volume-secret only.
const (
	OpEncrypt  = "encrypt"
	OpDecrypt  = "decrypt"
	OpMixed    = "mixed"
	OpGenerate = "generate"
	OpPublish  = "publish" // audit: the only operation
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
	API    string // xks | vs
	URL    string // https://127.0.0.1:8443
	CAFile string // PEM trust anchor; empty = system roots

	// XKS: SigV4 credentials of a key store and the key to use.
	Prefix      string // key store URI prefix
	AccessKeyID string
	Secret      string
	KeyID       string

	// Volume secrets: what `sovkeys instance issue-cert --out DIR` wrote.
	CertFile       string // DIR/cert.pem, the instance client certificate
	KeyFile        string // DIR/key.pem, its private key
	SigningKeyFile string // DIR/signing-key.pem, the pinned service signing key (PEM SPKI)
	InstanceID     string // the {InstanceId} the certificate names
	Instances      int    // vs: spread the load over this many instances ("%d" in -cert, -key, -instance)
	WrapKeys       int    // one-time RSA wrapping keys made before the run and rotated through
	RSABits        int    // their size
	KeepAlive      bool   // reuse TLS connections (default: a new one per call, as booting instances do)

	// Audit: the NATS connection of the services and the events to publish.
	NATSURL   string        // nats://127.0.0.1:4222
	NATSCreds string        // credentials file
	NATSCA    string        // CA file for NATS TLS
	Scopes    int           // distinct key stores the events are spread over
	Events    int           // events to publish; 0 = Rate x Duration
	AuditWait time.Duration // how long to wait for sequencing and export after publishing

	Op       string // xks: encrypt | decrypt | mixed; vs: generate | decrypt | mixed
	Size     int    // plaintext bytes
	AADSize  int    // additionalAuthenticatedData bytes
	PoolSize int    // pre-encrypted ciphertexts (xks) or encrypted_secrets (vs) for decrypt

	Concurrency int     // closed loop callers; open loop: unused
	Rate        float64 // open loop requests/s; 0 = closed loop
	MaxInFlight int     // open loop: most requests outstanding at once
	// Conns bounds the connections to the gateway (0: one per request in
	// flight); past it requests wait for a free connection, as behind a
	// client's connection pool, and no new TLS handshakes are made.
	Conns int

	Duration    time.Duration // measured
	Warmup      time.Duration // before Duration, not measured
	MaxRequests int64         // safety cap on requests sent, warmup included
	Timeout     time.Duration // per request

	NodePID   int // sample this process's CPU time over the window (Linux /proc); 0 = none
	JSONFile  string
	ChartFile string // PNG of the run's latency over time
	// RequestsFile: CSV of every measured request (requests.go).
	RequestsFile string
	Marks        []chart.Mark // vertical marks on it (seconds into the window)
	GoalRPS      float64
	GoalP99      time.Duration
	AllowRemote  bool
}

// OpenLoop reports whether requests are sent at a fixed rate.
func (c Config) OpenLoop() bool { return c.Rate > 0 }

// credsFile is the JSON `sovkeys xks keystore create` prints.
type credsFile struct {
	URIPrefix       string `json:"uriPrefix"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

const usageHeader = `loadtest - XKS or volume-secret load against a sovkeys gateway, or audit load

  loadtest -ca DATA/tls/ca.pem -creds-json ks.json -key KEYID [-op encrypt|decrypt|mixed]
           (-concurrency N | -rate R) [-duration 60s] [-warmup 5s] [-json out.json]
           [-goal-rps 1800 -goal-p99 25ms]
  loadtest -api vs -ca DATA/tls/ca.pem -cert DIR/cert.pem -key DIR/key.pem
           -signing-key DIR/signing-key.pem -instance ID [-op generate|decrypt|mixed]
           (-concurrency N | -rate R) [-wrap-keys 8] [-rsa-bits 3072] [-keepalive] ...
  loadtest -api audit [-nats nats://127.0.0.1:4222] [-nats-creds FILE] [-nats-ca FILE]
           -rate 5000 -scopes 200 -duration 60s | -events 100000 -scopes 20 [-wait 5m]
  loadtest chart -out FILE.png [-mark 12s=LABEL]... REPORT.json...
           PNG from -json reports: one = latency over time, several closed-loop
           runs = throughput vs concurrency (-chart FILE.png draws the first at
           the end of a run)

Closed loop (-concurrency) keeps N requests outstanding; open loop (-rate)
sends R requests/s on a fixed schedule and measures latency from each
request's intended send time. The XKS secret may also come from
SOVKEYS_XKS_SECRET. Only loopback targets unless -allow-remote.

-api vs calls as one instance over mutual TLS: a fresh volume_uuid per
generate-secret, decrypt-secret over a pool of encrypted_secrets made before
the run, every signature verified against -signing-key and every wrapped
secret unwrapped (failures are errors). The one-time RSA wrapping keys are
made before the run (-wrap-keys of -rsa-bits) and rotated through: key
generation is the instance's cost, not the service's. Each call opens a new
TLS connection unless -keepalive.

-api audit publishes audit events over NATS (to the event stream, as the
services do; fresh scopes each run) at -rate events/s for -duration (or
-events as fast as one publisher can) and reports how fast the running audit
services number them and export them to the central store, and their largest
lags. Only loopback NATS URLs unless -allow-remote.

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
	var credsJSON, key string
	fs.StringVar(&c.API, "api", APIXKS, "xks (SigV4 XKS proxy API) | vs (volume secrets over mutual TLS) | audit (audit events over NATS)")
	fs.StringVar(&c.URL, "url", "https://127.0.0.1:8443", "gateway base URL")
	fs.StringVar(&c.CAFile, "ca", "", "PEM file of the gateway's trust anchor (e.g. DATA/tls/ca.pem)")
	fs.StringVar(&c.Prefix, "prefix", "", "key store URI prefix (default: uriPrefix of -creds-json)")
	fs.StringVar(&c.AccessKeyID, "access-key-id", "", "key store SigV4 access key id")
	fs.StringVar(&c.Secret, "secret", getenv("SOVKEYS_XKS_SECRET"), "key store SigV4 secret (env SOVKEYS_XKS_SECRET)")
	fs.StringVar(&credsJSON, "creds-json", "", "JSON `FILE` printed by 'sovkeys xks keystore create' (prefix, access key id, secret)")
	fs.StringVar(&key, "key", "", "xks: the XKS key id (required); vs: the instance private key PEM `FILE` (DIR/key.pem)")
	fs.StringVar(&c.CertFile, "cert", "", "vs: instance client certificate PEM `FILE` (DIR/cert.pem)")
	fs.StringVar(&c.SigningKeyFile, "signing-key", "", "vs: pinned service signing key, PEM SPKI `FILE` (DIR/signing-key.pem)")
	fs.StringVar(&c.InstanceID, "instance", "", "vs: the instance id the certificate was issued for")
	fs.IntVar(&c.Instances, "instances", 1, "vs: spread calls over N instances; -cert, -key and -instance then hold %d for the instance number 0..N-1")
	fs.IntVar(&c.WrapKeys, "wrap-keys", 8, "vs: one-time RSA wrapping keys made before the run and rotated through")
	fs.IntVar(&c.RSABits, "rsa-bits", 3072, "vs: size of the wrapping keys (2048-4096)")
	fs.BoolVar(&c.KeepAlive, "keepalive", false, "vs: reuse TLS connections instead of one new connection per call")
	fs.StringVar(&c.NATSURL, "nats", envOr(getenv, "SOVKEYS_NATS_URL", "nats://127.0.0.1:4222"), "audit: NATS server URL(s), comma separated (env SOVKEYS_NATS_URL)")
	fs.StringVar(&c.NATSCreds, "nats-creds", getenv("SOVKEYS_NATS_CREDS"), "audit: NATS credentials `FILE` (env SOVKEYS_NATS_CREDS)")
	fs.StringVar(&c.NATSCA, "nats-ca", getenv("SOVKEYS_NATS_CA"), "audit: CA `FILE` for NATS TLS (env SOVKEYS_NATS_CA)")
	fs.IntVar(&c.Scopes, "scopes", 20, "audit: distinct key stores the events are spread over")
	fs.IntVar(&c.Events, "events", 0, "audit: events to publish (default: -rate x -duration; without -rate, as fast as possible)")
	fs.DurationVar(&c.AuditWait, "wait", 5*time.Minute, "audit: how long to wait for sequencing and export after publishing")
	fs.StringVar(&c.Op, "op", "", "xks: encrypt (default) | decrypt | mixed; vs: generate (default) | decrypt | mixed; mixed = half each")
	fs.IntVar(&c.Size, "size", 1024, "plaintext bytes")
	fs.IntVar(&c.AADSize, "aad", 0, "additionalAuthenticatedData bytes")
	fs.IntVar(&c.PoolSize, "pool", 256, "ciphertexts (xks) or encrypted_secrets (vs) made before a decrypt or mixed run")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "closed loop: requests outstanding at once")
	fs.Float64Var(&c.Rate, "rate", 0, "open loop: requests per second (replaces -concurrency)")
	fs.IntVar(&c.MaxInFlight, "max-inflight", 512, "open loop: most requests outstanding at once")
	fs.IntVar(&c.Conns, "conns", 0, "xks: most connections to the gateway (0: one per request in flight); requests past it wait for a free one, as behind a connection pool")
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "measured run time (at most 1h)")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "unmeasured load before the measured run")
	fs.Int64Var(&c.MaxRequests, "max-requests", 2_000_000, "safety cap on requests sent, warmup included")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.IntVar(&c.NodePID, "node-pid", 0, "also report the CPU time this process (the sovkeys node) used in the measured window")
	fs.StringVar(&c.JSONFile, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&c.RequestsFile, "requests", "", "also write every measured request (send time, latency, failed) as CSV to this `FILE`, for finding periodic stalls")
	fs.StringVar(&c.ChartFile, "chart", "", "also write the run's latency over time (slowest request of each second, seconds with errors shaded) as a PNG `FILE`")
	fs.Var((*markFlag)(&c.Marks), "mark", "-chart: OFFSET=LABEL, a vertical mark OFFSET (e.g. 12s) into the measured window, e.g. when a fault was injected; repeatable")
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
	if err := checkAPIFlags(c.API, set); err != nil {
		return Config{}, err
	}
	switch c.API {
	case APIVS:
		c.KeyFile = key
		if c.Op == "" {
			c.Op = OpGenerate
		}
	case APIAudit:
		c.Op = OpPublish
		if c.Events == 0 && c.Rate > 0 {
			c.Events = int(c.Rate * c.Duration.Seconds())
		}
	default:
		c.KeyID = key
		if c.Op == "" {
			c.Op = OpEncrypt
		}
	}
	if credsJSON != "" {
		if err := c.applyCreds(credsJSON, set); err != nil {
			return Config{}, err
		}
	}
	return c, c.Validate()
}

// Flags that belong to one API only; giving one to the other is a mistake
// worth stopping for (it would be silently ignored).
var (
	xksOnlyFlags   = []string{"creds-json", "prefix", "access-key-id", "secret", "size", "aad"}
	vsOnlyFlags    = []string{"cert", "signing-key", "instance", "instances", "wrap-keys", "rsa-bits", "keepalive"}
	auditOnlyFlags = []string{"nats", "nats-creds", "nats-ca", "scopes", "events", "wait"}
	// httpOnlyFlags are the flags of the HTTPS APIs (xks and vs), which
	// mean nothing to -api audit.
	httpOnlyFlags = []string{"url", "ca", "key", "op", "pool", "concurrency", "max-inflight", "warmup",
		"max-requests", "timeout", "goal-rps", "goal-p99"}
)

func checkAPIFlags(api string, set map[string]bool) error {
	var other []string
	switch api {
	case APIXKS:
		other = slices.Concat(vsOnlyFlags, auditOnlyFlags)
	case APIVS:
		other = slices.Concat(xksOnlyFlags, auditOnlyFlags)
	case APIAudit:
		other = slices.Concat(xksOnlyFlags, vsOnlyFlags, httpOnlyFlags)
	default:
		return fmt.Errorf("%w: -api must be xks, vs or audit", ErrConfigValidation)
	}
	name := api
	for _, f := range other {
		if set[f] {
			return fmt.Errorf("%w: -%s does not apply to -api %s", ErrConfigValidation, f, name)
		}
	}
	return nil
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
	if c.API == APIAudit {
		return c.validateAudit()
	}
	u, err := url.Parse(c.URL)
	switch {
	case err != nil:
		return bad("-url: %v", err)
	case u.Scheme != "https" || u.Host == "":
		return bad("-url must be https://host:port")
	case u.Path != "" && u.Path != "/":
		return bad("-url takes no path (the XKS key store goes in -prefix)")
	}
	if !c.AllowRemote && !isLoopbackHost(u.Hostname()) {
		return bad("-url host %q is not a loopback address; pass -allow-remote to load a remote gateway", u.Hostname())
	}
	switch c.API {
	case APIXKS:
		if err := c.validateXKS(); err != nil {
			return err
		}
	case APIVS:
		if err := c.validateVS(); err != nil {
			return err
		}
	default:
		return bad("-api must be xks, vs or audit")
	}
	switch {
	case c.Op != OpEncrypt && c.Op != OpGenerate && (c.PoolSize < 1 || c.PoolSize > 100_000):
		return bad("-pool must be in [1, 100000]")
	case c.Rate < 0 || c.Rate > maxRate:
		return bad("-rate must be in [0, %d]", maxRate)
	case !c.OpenLoop() && (c.Concurrency < 1 || c.Concurrency > maxConcurrency):
		return bad("-concurrency must be in [1, %d]", maxConcurrency)
	case c.OpenLoop() && (c.MaxInFlight < 1 || c.MaxInFlight > maxConcurrency):
		return bad("-max-inflight must be in [1, %d]", maxConcurrency)
	case c.Conns < 0 || c.Conns > maxConcurrency:
		return bad("-conns must be in [0, %d]", maxConcurrency)
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
	case c.NodePID < 0:
		return bad("-node-pid must not be negative")
	}
	return nil
}

func (c Config) validateXKS() error {
	prefix := strings.Trim(c.Prefix, "/")
	switch {
	case prefix != "" && !xks.ValidPrefix(prefix):
		return fmt.Errorf("%w: -prefix %q is not a valid key store prefix", ErrConfigValidation, c.Prefix)
	case c.AccessKeyID == "" || c.Secret == "":
		return fmt.Errorf("%w: credentials required: -creds-json FILE, or -access-key-id and -secret", ErrConfigValidation)
	case c.KeyID == "" || !xks.ValidKeyID(c.KeyID):
		return fmt.Errorf("%w: -key: a key id of 1-128 characters of [A-Za-z0-9_-] is required", ErrConfigValidation)
	}
	switch c.Op {
	case OpEncrypt, OpDecrypt, OpMixed:
	default:
		return fmt.Errorf("%w: -op must be encrypt, decrypt or mixed with -api xks", ErrConfigValidation)
	}
	switch {
	case c.Size < 1 || c.Size > maxPlaintext:
		return fmt.Errorf("%w: -size must be in [1, %d]", ErrConfigValidation, maxPlaintext)
	case c.AADSize < 0 || c.AADSize > maxPlaintext:
		return fmt.Errorf("%w: -aad must be in [0, %d]", ErrConfigValidation, maxPlaintext)
	}
	return nil
}

// Bounds of the volume-secret flags. 4096 bits is below the service's
// limit (vs.MaxRSABits) but already takes seconds per key to make.
const (
	maxWrapKeys    = 1024
	maxInstances   = 256
	maxWrapKeyBits = 4096
)

func (c Config) validateVS() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfigValidation}, args...)...)
	}
	switch {
	case c.CertFile == "" || c.KeyFile == "" || c.SigningKeyFile == "":
		return bad("-api vs needs -cert, -key and -signing-key (the files of 'sovkeys instance issue-cert --out DIR')")
	case c.Instances < 1 || c.Instances > maxInstances:
		return bad("-instances must be in [1, %d]", maxInstances)
	case c.Instances > 1 && !(strings.Contains(c.CertFile, "%d") && strings.Contains(c.KeyFile, "%d") && strings.Contains(c.InstanceID, "%d")):
		return bad("-instances above 1 needs %%d in -cert, -key and -instance (the instance number)")
	case !vs.ValidID(instanceFile(c.InstanceID, c.Instances-1, c.Instances)):
		return bad("-instance: the instance id of the certificate (1-%d characters of [A-Za-z0-9._:-]) is required", vs.MaxIDLen)
	case c.WrapKeys < 1 || c.WrapKeys > maxWrapKeys:
		return bad("-wrap-keys must be in [1, %d]", maxWrapKeys)
	case c.RSABits < vs.MinRSABits || c.RSABits > maxWrapKeyBits:
		return bad("-rsa-bits must be in [%d, %d]", vs.MinRSABits, maxWrapKeyBits)
	}
	switch c.Op {
	case OpGenerate, OpDecrypt, OpMixed:
	default:
		return bad("-op must be generate, decrypt or mixed with -api vs")
	}
	return nil
}

// Bounds of an audit run.
const (
	maxAuditEvents = 10_000_000
	maxAuditWait   = time.Hour
)

func (c Config) validateAudit() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfigValidation}, args...)...)
	}
	if len(splitURLs(c.NATSURL)) == 0 {
		return bad("-nats: a NATS URL is required")
	}
	for _, raw := range splitURLs(c.NATSURL) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			return bad("-nats %q is not a URL like nats://127.0.0.1:4222", raw)
		}
		if !c.AllowRemote && !isLoopbackHost(u.Hostname()) {
			return bad("-nats host %q is not a loopback address; pass -allow-remote to load a remote NATS", u.Hostname())
		}
	}
	switch {
	case c.Rate < 0 || c.Rate > maxRate:
		return bad("-rate must be in [0, %d]", maxRate)
	case c.Duration <= 0 || c.Duration > maxDuration:
		return bad("-duration must be in (0, %s]", maxDuration)
	case c.Events < 1 || c.Events > maxAuditEvents:
		return bad("-api audit needs -rate (events = rate x duration) or -events, at most %d events", maxAuditEvents)
	case c.Scopes < 1 || c.Scopes > c.Events:
		return bad("-scopes must be in [1, events]")
	case c.AuditWait <= 0 || c.AuditWait > maxAuditWait:
		return bad("-wait must be in (0, %s]", maxAuditWait)
	}
	return nil
}

// splitURLs splits a comma-separated list of URLs, dropping blanks.
func splitURLs(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

// opNames are the operations a run of c can send, the first being the one
// an unnamed request counts against.
func (c Config) opNames() []string {
	if c.API == APIVS {
		return []string{OpGenerate, OpDecrypt}
	}
	return []string{OpEncrypt, OpDecrypt}
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
