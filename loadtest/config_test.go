package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	t.Parallel()
	creds := filepath.Join(t.TempDir(), "ks.json")
	if err := os.WriteFile(creds, []byte(`{"uriPrefix":"/bench","uriPath":"/bench/kms/xks/v1",
		"accessKeyId":"ABCDEFGHIJKLMNOPQRST","secretAccessKey":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw=="}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"-creds-json", creds, "-key", "k1"}
	vsBase := []string{"-api", "vs", "-cert", "d/cert.pem", "-key", "d/key.pem", "-signing-key", "d/signing-key.pem", "-instance", "i-bench"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" = valid
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults from creds json", args: base, check: func(t *testing.T, c Config) {
			if c.Prefix != "/bench" || c.AccessKeyID != "ABCDEFGHIJKLMNOPQRST" || c.Secret == "" {
				t.Errorf("creds not applied: %+v", c)
			}
			if c.OpenLoop() || c.workers() != 16 || c.Duration != time.Minute || c.Warmup != 5*time.Second {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "flags override creds json", args: append([]string{"-prefix", "/other"}, base...), check: func(t *testing.T, c Config) {
			if c.Prefix != "/other" {
				t.Errorf("prefix = %q", c.Prefix)
			}
		}},
		{name: "explicit credentials and env secret", args: []string{"-key", "k1", "-access-key-id", "ABCDEFGHIJKLMNOPQRST"},
			env: map[string]string{"SOVKEYS_XKS_SECRET": "s3cret"}, check: func(t *testing.T, c Config) {
				if c.Secret != "s3cret" {
					t.Errorf("secret from env not used")
				}
			}},
		{name: "open loop", args: append([]string{"-rate", "1800", "-max-inflight", "64"}, base...), check: func(t *testing.T, c Config) {
			if !c.OpenLoop() || c.workers() != 64 {
				t.Errorf("open loop: %+v", c)
			}
		}},
		{name: "localhost allowed", args: append([]string{"-url", "https://localhost:18443"}, base...)},
		{name: "ipv6 loopback allowed", args: append([]string{"-url", "https://[::1]:18443"}, base...)},
		{name: "remote refused", args: append([]string{"-url", "https://10.0.0.1:8443"}, base...), wantErr: "not a loopback"},
		{name: "name resolving elsewhere refused", args: append([]string{"-url", "https://xks.example.com"}, base...), wantErr: "not a loopback"},
		{name: "remote with allow-remote", args: append([]string{"-url", "https://xks.example.com", "-allow-remote"}, base...)},
		{name: "plain http refused", args: append([]string{"-url", "http://127.0.0.1:8443"}, base...), wantErr: "https"},
		{name: "path in url refused", args: append([]string{"-url", "https://127.0.0.1:8443/bench"}, base...), wantErr: "-prefix"},
		{name: "rate and concurrency exclusive", args: append([]string{"-rate", "10", "-concurrency", "4"}, base...), wantErr: "exclude"},
		{name: "no key", args: []string{"-creds-json", creds}, wantErr: "-key"},
		{name: "bad key id", args: []string{"-creds-json", creds, "-key", "a/b"}, wantErr: "-key"},
		{name: "no credentials", args: []string{"-key", "k1"}, wantErr: "credentials"},
		{name: "bad op", args: append([]string{"-op", "sign"}, base...), wantErr: "-op"},
		{name: "zero size", args: append([]string{"-size", "0"}, base...), wantErr: "-size"},
		{name: "duration unbounded", args: append([]string{"-duration", "2h"}, base...), wantErr: "-duration"},
		{name: "concurrency too high", args: append([]string{"-concurrency", "100000"}, base...), wantErr: "-concurrency"},
		{name: "rate too high", args: append([]string{"-rate", "1e9"}, base...), wantErr: "-rate"},
		{name: "cap not positive", args: append([]string{"-max-requests", "0"}, base...), wantErr: "-max-requests"},
		{name: "bad prefix", args: append([]string{"-prefix", "/a b"}, base...), wantErr: "-prefix"},
		{name: "missing creds file", args: []string{"-creds-json", filepath.Join(t.TempDir(), "nope"), "-key", "k"}, wantErr: "-creds-json"},
		{name: "stray argument", args: append(base, "extra"), wantErr: "unexpected"},
		{name: "xks is the default api", args: base, check: func(t *testing.T, c Config) {
			if c.API != APIXKS || c.Op != OpEncrypt || c.KeyID != "k1" || c.KeyFile != "" {
				t.Errorf("xks defaults: %+v", c)
			}
		}},
		{name: "vs defaults", args: vsBase, check: func(t *testing.T, c Config) {
			if c.API != APIVS || c.Op != OpGenerate || c.KeyFile != "d/key.pem" || c.KeyID != "" ||
				c.WrapKeys != 8 || c.RSABits != 3072 || c.KeepAlive || c.InstanceID != "i-bench" {
				t.Errorf("vs defaults: %+v", c)
			}
		}},
		{name: "vs decrypt open loop", args: append([]string{"-op", "decrypt", "-rate", "100", "-keepalive"}, vsBase...), check: func(t *testing.T, c Config) {
			if c.Op != OpDecrypt || !c.OpenLoop() || !c.KeepAlive {
				t.Errorf("vs decrypt: %+v", c)
			}
		}},
		{name: "vs needs no xks secret from env", args: vsBase, env: map[string]string{"SOVKEYS_XKS_SECRET": "s3cret"}},
		{name: "unknown api", args: append([]string{"-api", "kmip"}, base...), wantErr: "-api"},
		{name: "vs refuses xks flags", args: append([]string{"-creds-json", creds}, vsBase...), wantErr: "-creds-json does not apply"},
		{name: "vs refuses -size", args: append([]string{"-size", "64"}, vsBase...), wantErr: "-size does not apply"},
		{name: "xks refuses vs flags", args: append([]string{"-cert", "c.pem"}, base...), wantErr: "-cert does not apply"},
		{name: "vs without instance", args: vsBase[:len(vsBase)-2], wantErr: "-instance"},
		{name: "vs without signing key", args: []string{"-api", "vs", "-cert", "c", "-key", "k", "-instance", "i"}, wantErr: "-signing-key"},
		{name: "vs op encrypt", args: append([]string{"-op", "encrypt"}, vsBase...), wantErr: "-op"},
		{name: "xks op generate", args: append([]string{"-op", "generate"}, base...), wantErr: "-op"},
		{name: "vs small wrapping keys", args: append([]string{"-rsa-bits", "1024"}, vsBase...), wantErr: "-rsa-bits"},
		{name: "vs no wrapping keys", args: append([]string{"-wrap-keys", "0"}, vsBase...), wantErr: "-wrap-keys"},
		{name: "vs instances without a pattern", args: append([]string{"-instances", "4"}, vsBase...), wantErr: "%d in -cert"},
		{name: "vs too many instances", args: append([]string{"-instances", "1000"}, vsBase...), wantErr: "-instances must be"},
		{name: "vs instances", args: []string{"-api", "vs", "-cert", "d%d/cert.pem", "-key", "d%d/key.pem", "-signing-key", "s.pem",
			"-instance", "i-bench-%d", "-instances", "8"}, check: func(t *testing.T, c Config) {
			if c.Instances != 8 || instanceFile(c.InstanceID, 7, c.Instances) != "i-bench-7" || instanceFile(c.CertFile, 3, 8) != "d3/cert.pem" {
				t.Errorf("vs instances: %+v", c)
			}
		}},
		{name: "audit events from rate and duration", args: []string{"-api", "audit", "-rate", "5000", "-scopes", "200", "-duration", "60s"},
			check: func(t *testing.T, c Config) {
				if c.Events != 300_000 || c.Scopes != 200 || c.NATSURL != "nats://127.0.0.1:4222" || c.Op != OpPublish {
					t.Errorf("audit config: %+v", c)
				}
			}},
		{name: "audit nats from env", args: []string{"-api", "audit", "-events", "100"},
			env: map[string]string{"SOVKEYS_NATS_URL": "nats://[::1]:4222", "SOVKEYS_NATS_CREDS": "svc.creds"}, check: func(t *testing.T, c Config) {
				if c.NATSURL != "nats://[::1]:4222" || c.NATSCreds != "svc.creds" || c.Events != 100 {
					t.Errorf("audit env: %+v", c)
				}
			}},
		{name: "audit needs rate or events", args: []string{"-api", "audit"}, wantErr: "-rate"},
		{name: "audit more scopes than events", args: []string{"-api", "audit", "-events", "10", "-scopes", "11"}, wantErr: "-scopes"},
		{name: "audit remote nats refused", args: []string{"-api", "audit", "-events", "10", "-nats", "nats://127.0.0.1:4222,nats://10.0.0.1:4222"}, wantErr: "not a loopback"},
		{name: "audit remote nats with allow-remote", args: []string{"-api", "audit", "-events", "100", "-nats", "nats://nats.example.com:4222", "-allow-remote"}},
		{name: "audit refuses xks flags", args: []string{"-api", "audit", "-events", "10", "-creds-json", creds}, wantErr: "-creds-json does not apply"},
		{name: "audit refuses http flags", args: []string{"-api", "audit", "-events", "10", "-concurrency", "4"}, wantErr: "-concurrency does not apply"},
		{name: "xks refuses audit flags", args: append([]string{"-scopes", "4"}, base...), wantErr: "-scopes does not apply"},
		{name: "vs refuses audit flags", args: append([]string{"-nats", "nats://127.0.0.1:4222"}, vsBase...), wantErr: "-nats does not apply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			c, err := parseConfig(tc.args, getenv, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrConfigValidation) {
					t.Errorf("err %v does not wrap ErrConfigValidation", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}
