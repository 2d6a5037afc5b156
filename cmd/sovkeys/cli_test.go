package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, func(string) string { return "" }, &o, &e)
	return code, o.String(), e.String()
}

// Each service takes only its own flags: another service's flag is refused
// before anything starts, naming the flag.
func TestServiceRejectsOtherServicesFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // named in the error
	}{
		// standalone makes its own token and credentials; operator
		// commands take no service flags; audit bench moved to loadtest/.
		{[]string{"authn", "--hsm-module", "x"}, "hsm-module"},
		{[]string{"authn", "--listen", "127.0.0.1:1"}, "listen"},
		{[]string{"gateway", "--hsm-pin-file", "/etc/passwd"}, "hsm-pin-file"},
		{[]string{"gateway", "--max-skew", "1h"}, "max-skew"},
		{[]string{"keyworker", "--tls-cert", "x"}, "tls-cert"},
		{[]string{"keyworker", "--audit-store", "s3"}, "audit-store"},
		{[]string{"audit", "--hsm-module", "x"}, "hsm-module"},
		{[]string{"audit", "--rate-per-ip", "1"}, "rate-per-ip"},
		{[]string{"standalone", "--data", "x", "--hsm-module", "x"}, "hsm-module"},
		{[]string{"standalone", "--data", "x", "--creds", "x"}, "creds"},
		{[]string{"xks", "keystore", "list", "--hsm-module", "x"}, "hsm-module"},
		{[]string{"killswitch", "status", "--all"}, "all"},
		{[]string{"audit", "bench", "--events", "10"}, "bench"},
		{[]string{"authn", "stray-argument"}, "stray-argument"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, stderr := runCLI(tc.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr does not name %q: %s", tc.want, stderr)
			}
		})
	}
}

// The flags a service needs are all there (the refusals above are not an
// empty FlagSet).
func TestServiceFlagSets(t *testing.T) {
	want := map[string][]string{
		"gateway":    {"nats", "creds", "log-level", "replicas", "listen", "tls-cert", "tls-key", "pool", "trusted-proxy-cidrs"},
		"authn":      {"nats", "max-skew", "rate-per-credential", "server-id", "hsm-model"},
		"keyworker":  {"nats", "pool", "hsm-module", "hsm-token-label", "hsm-pin-file", "hsm-model", "ekt-store", "s3-bucket", "s3-endpoint"},
		"audit":      {"nats", "audit-store", "audit-s3-bucket", "audit-s3-prefix", "audit-sign-pool", "audit-tenant-export", "s3-endpoint"},
		"standalone": {"data", "nats-listen", "listen", "max-skew", "hsm-model", "audit-store", "unseal-shares", "nats-ca"},
	}
	cmds := commands()
	for name, flags := range want {
		c, rest, ok := lookup(cmds, []string{name})
		if !ok || len(rest) != 0 {
			t.Fatalf("no command %s", name)
		}
		fs, _ := c.flagSet(func(string) string { return "" }, nil)
		for _, f := range flags {
			if fs.Lookup(f) == nil {
				t.Errorf("%s has no --%s", name, f)
			}
		}
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI("--help")
	if code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, c := range commands() {
		if c.Group != groupHidden && !strings.Contains(out, "sovkeys "+c.Name+" ") {
			t.Errorf("--help lacks %q", c.Name)
		}
	}
	if strings.Contains(out, "audit bench") {
		t.Error("--help still offers audit bench")
	}
	code, out, _ = runCLI("help", "xks", "key", "create")
	if code != 0 || !strings.Contains(out, "usage: sovkeys xks key create") || !strings.Contains(out, "-usage") || strings.Contains(out, "-prefix") {
		t.Fatalf("help xks key create: %d %s", code, out)
	}
	code, _, stderr := runCLI("xks", "key")
	if code != 2 || !strings.Contains(stderr, "sovkeys xks key create") {
		t.Fatalf("xks key: %d %s", code, stderr)
	}
	for _, args := range [][]string{{}, {"nosuch"}, {"help", "nosuch"}} {
		if code, _, _ := runCLI(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// failingKV is a KV bucket whose reads fail after listing.
type failingKV struct {
	jetstream.KeyValue
	listErr, getErr error
}

type keyLister struct{ keys chan string }

func (l keyLister) Keys() <-chan string { return l.keys }
func (l keyLister) Stop() error         { return nil }

func (f failingKV) ListKeys(context.Context, ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	if f.listErr != nil {
		return nil, f.listErr
	}
	ch := make(chan string, 1)
	ch <- "all"
	close(ch)
	return keyLister{ch}, nil
}

func (f failingKV) Get(context.Context, string) (jetstream.KeyValueEntry, error) {
	return nil, f.getErr
}

// A read error must fail `killswitch status`, never print "nothing engaged".
func TestKillswitchStatusReadError(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("nats: timeout")
	if out, err := killswitchStatus(ctx, failingKV{listErr: boom}); !errors.Is(err, boom) || out != nil {
		t.Fatalf("list error: %v %v", out, err)
	}
	if out, err := killswitchStatus(ctx, failingKV{getErr: boom}); !errors.Is(err, boom) || out != nil {
		t.Fatalf("get error: %v %v", out, err)
	}
	if out, err := killswitchStatus(ctx, failingKV{listErr: jetstream.ErrNoKeysFound}); err != nil || len(out) != 0 {
		t.Fatalf("no switches: %v %v", out, err)
	}
}

// A topology init cannot declare is refused before any connection.
func TestInitRefusesABadTopology(t *testing.T) {
	for _, args := range [][]string{{"--stream-siblings", "9"}, {"--replicas", "0"}} {
		code, _, stderr := runCLI(append([]string{"init", "--nats", "nats://127.0.0.1:1", "--creds", "/nonexistent"}, args...)...)
		if code == 0 || !strings.Contains(stderr, "invalid configuration") {
			t.Fatalf("init %v: code %d, stderr %q", args, code, stderr)
		}
	}
}

var update = flag.Bool("update", false, "rewrite the generated block of README.md")

// The README's command and configuration tables are the command table's:
// `go test ./cmd/sovkeys -run TestREADMETables -update` rewrites them.
func TestREADMETables(t *testing.T) {
	const path, begin, end = "../../README.md", "<!-- flags:begin -->\n", "<!-- flags:end -->"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q block", begin, end)
	}
	want := readmeTables(commands())
	if got := s[i+len(begin) : j]; got != want {
		if *update {
			if err := os.WriteFile(path, []byte(s[:i+len(begin)]+want+s[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("README.md tables differ from the command table; run: go test ./cmd/sovkeys -run TestREADMETables -update\n--- README\n%s\n--- want\n%s", got, want)
	}
	// The hidden docs command prints the same.
	if code, out, _ := runCLI("docs"); code != 0 || out != want {
		t.Fatalf("sovkeys docs: exit %d", code)
	}
}
