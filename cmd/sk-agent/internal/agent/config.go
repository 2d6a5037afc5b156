package agent

import (
	"bufio"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// Default paths.
const (
	DefaultConfigFile    = "/etc/sovkeys-agent/agent.conf"
	DefaultAutomountFile = "/etc/sovkeys-agent/automount.conf"
	DefaultRunDir        = "/run/sk-agent"
)

// Config is the agent's configuration file: `key = value` lines, `#`
// comments (docs/agent.md, deploy/agent/agent.conf).
type Config struct {
	URL string // https://host:port of the gateway
	// InstanceID is this instance's id; "imds" reads it from the EC2
	// instance metadata service (IMDSv2).
	InstanceID string
	Auth       string // mtls (default) or aws
	// mTLS: the files `sovkeys instance issue-cert` wrote.
	Cert, Key string
	// CA is the trust anchor of the gateway's TLS certificate (empty: system roots).
	CA string
	// SigningKey is the pinned service signing key (PEM "PUBLIC KEY" or DER).
	SigningKey string
	// AWS identity (docs/aws-identity.md).
	AWSSTSEndpoint, AWSRegion, AWSServerID, AWSTenant string
	// RequireNitro enforces the original's Nitro check (board asset tag =
	// instance id); on by default with auth = aws.
	RequireNitro  bool
	AutomountFile string
	RunDir        string
	RSABits       int
	Retry         Retry
}

// DefaultConfig is the configuration before the file is read.
func DefaultConfig() Config {
	return Config{
		Auth: "mtls", AutomountFile: DefaultAutomountFile, RunDir: DefaultRunDir, RSABits: 3072,
		Retry: Retry{Attempts: 8, Initial: time.Second, Max: 30 * time.Second, CallTimeout: 30 * time.Second},
	}
}

// LoadConfig reads path over the defaults. A missing file is an error
// unless allowMissing (commands that need no service).
func LoadConfig(path string, allowMissing bool) (Config, error) {
	c := DefaultConfig()
	f, err := os.Open(path)
	if err != nil {
		if allowMissing && errors.Is(err, os.ErrNotExist) {
			return c, nil
		}
		return c, fmt.Errorf("%w: config: %v", shared.ErrConfigValidation, err)
	}
	defer f.Close()
	requireNitroSet := false
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return c, fmt.Errorf("%w: %s:%d: want key = value", shared.ErrConfigValidation, path, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if err := c.set(k, v); err != nil {
			return c, fmt.Errorf("%w: %s:%d: %s: %v", shared.ErrConfigValidation, path, line, k, err)
		}
		requireNitroSet = requireNitroSet || k == "require_nitro"
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if c.Auth == "aws" && !requireNitroSet {
		c.RequireNitro = true
	}
	return c, nil
}

func (c *Config) set(k, v string) error {
	dur := func(d *time.Duration) error {
		x, err := time.ParseDuration(v)
		if err != nil || x <= 0 {
			return errors.New("want a positive duration such as 2s")
		}
		*d = x
		return nil
	}
	num := func(n *int) error {
		x, err := strconv.Atoi(v)
		if err != nil || x <= 0 {
			return errors.New("want a positive integer")
		}
		*n = x
		return nil
	}
	switch k {
	case "url":
		c.URL = v
	case "instance_id":
		c.InstanceID = v
	case "auth":
		c.Auth = v
	case "cert":
		c.Cert = v
	case "key":
		c.Key = v
	case "ca":
		c.CA = v
	case "signing_key":
		c.SigningKey = v
	case "aws_sts_endpoint":
		c.AWSSTSEndpoint = v
	case "aws_region":
		c.AWSRegion = v
	case "aws_server_id":
		c.AWSServerID = v
	case "aws_tenant":
		c.AWSTenant = v
	case "require_nitro":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		c.RequireNitro = b
	case "automount_file":
		c.AutomountFile = v
	case "run_dir":
		c.RunDir = v
	case "rsa_bits":
		return num(&c.RSABits)
	case "retries":
		return num(&c.Retry.Attempts)
	case "retry_initial":
		return dur(&c.Retry.Initial)
	case "retry_max":
		return dur(&c.Retry.Max)
	case "call_timeout":
		return dur(&c.Retry.CallTimeout)
	default:
		return errors.New("unknown key")
	}
	return nil
}

// Validate checks what talking to the service needs.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: config: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	switch {
	case !strings.HasPrefix(c.URL, "https://"):
		return bad("url must be https://host[:port]")
	case c.SigningKey == "":
		return bad("signing_key (the pinned service signing key) is required")
	case c.InstanceID != "imds" && !vs.ValidID(c.InstanceID):
		return bad("instance_id must be an instance id or \"imds\"")
	case c.RSABits < vs.MinRSABits || c.RSABits > vs.MaxRSABits:
		return bad("rsa_bits must be %d to %d", vs.MinRSABits, vs.MaxRSABits)
	case c.Retry.Attempts > 100:
		return bad("retries must be at most 100")
	}
	switch c.Auth {
	case "mtls":
		if c.Cert == "" || c.Key == "" {
			return bad("auth = mtls needs cert and key")
		}
	case "aws":
		if c.AWSSTSEndpoint == "" || c.AWSRegion == "" || c.AWSServerID == "" {
			return bad("auth = aws needs aws_sts_endpoint, aws_region and aws_server_id")
		}
	default:
		return bad("auth must be mtls or aws")
	}
	return nil
}

// signingKeyDER reads the pinned key file (PEM or DER).
func (c Config) signingKeyDER() ([]byte, error) {
	b, err := os.ReadFile(c.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("%w: signing_key: %v", shared.ErrConfigValidation, err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: signing_key: PEM block %q, want PUBLIC KEY", shared.ErrConfigValidation, blk.Type)
		}
		return blk.Bytes, nil
	}
	return b, nil
}
