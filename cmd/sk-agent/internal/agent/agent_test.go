package agent

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/disk"
	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

func TestCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want ExitCode
	}{
		{nil, ExitOK},
		{usagef("x"), ExitUsage},
		{fmt.Errorf("%w: x", shared.ErrConfigValidation), ExitUsage},
		{ErrNotRoot, ExitNotRoot},
		{fmt.Errorf("%w: x", ErrPlatform), ExitPlatform},
		{fmt.Errorf("%w: x", disk.ErrNotEmpty), ExitDevice},
		{fmt.Errorf("%w: x", disk.ErrInUse), ExitDevice},
		{fmt.Errorf("a: %w", vsclient.ErrBadSignature), ExitSignature},
		{ErrKeyMismatch, ExitSignature},
		{fmt.Errorf("%w: %w", ErrUnreachable, &vsclient.APIError{Status: 503}), ExitUnreachable},
		{&vsclient.APIError{Status: 400, Message: "tampered"}, ExitRefused},
		{fmt.Errorf("%w: x", ErrNoDM), ExitUnlock},
		{fmt.Errorf("%w: x", store.ErrCorrupt), ExitStore},
		{ErrVolumeBound, ExitStore},
		{ErrNotOwner, ExitNotOwner},
		{errors.New("disk on fire"), ExitFailure},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// Bounded retries: transient failures are retried with doubling waits up
// to the cap, a refusal or a bad signature is not retried at all.
func TestRetry(t *testing.T) {
	r := Retry{Attempts: 5, Initial: time.Second, Max: 3 * time.Second, CallTimeout: time.Second}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name      string
		errs      []error
		calls     int
		waits     []time.Duration
		wantCode  ExitCode
		wantNoErr bool
	}{
		{"succeeds after two outages", []error{&net.OpError{Op: "dial", Err: errors.New("refused")}, &vsclient.APIError{Status: 503}, nil}, 3, []time.Duration{time.Second, 2 * time.Second}, ExitOK, true},
		{"gives up, bounded", []error{io.ErrUnexpectedEOF}, 5, []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}, ExitUnreachable, false},
		{"429 is retried", []error{&vsclient.APIError{Status: 429}, nil}, 2, []time.Duration{time.Second}, ExitOK, true},
		{"refusal is final", []error{&vsclient.APIError{Status: 403}}, 1, nil, ExitRefused, false},
		{"bad signature is final", []error{vsclient.ErrBadSignature}, 1, nil, ExitSignature, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var waits []time.Duration
			sleep := func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			calls := 0
			err := r.call(context.Background(), log, sleep, "op", func(context.Context) error {
				e := tc.errs[min(calls, len(tc.errs)-1)]
				calls++
				return e
			})
			if calls != tc.calls || fmt.Sprint(waits) != fmt.Sprint(tc.waits) || Code(err) != tc.wantCode || (err == nil) != tc.wantNoErr {
				t.Fatalf("calls %d waits %v err %v (code %d)", calls, waits, err, Code(err))
			}
		})
	}
}

func TestAutomountFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "etc", "automount.conf")
	for _, e := range []Entry{
		{"/dev/sdf", "/mnt/data"},
		{"/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/srv/a b"},
		{"/dev/sdf", "/mnt/other"}, // replaces the first
	} {
		if err := AddAutomount(path, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadAutomount(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{"/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/srv/a b"}, {"/dev/sdf", "/mnt/other"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v", got)
	}
	if err := AddAutomount(path, Entry{"/dev/sdg", "relative"}); Code(err) != ExitUsage {
		t.Fatalf("relative mount point: %v", err)
	}
	if err := os.WriteFile(path, []byte("/dev/sdf\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAutomount(path); Code(err) != ExitUsage {
		t.Fatalf("malformed line: %v", err)
	}
	if e, err := ReadAutomount(filepath.Join(t.TempDir(), "none")); err != nil || e != nil {
		t.Fatalf("missing file: %v %v", e, err)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "agent.conf")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := "url = https://127.0.0.1:8443\ninstance_id = i-1\ncert = c\nkey = k\nsigning_key = s\n# comment\nretries = 4\nretry_initial = 10ms\n"
	c, err := LoadConfig(write(good), false)
	if err != nil || c.Validate() != nil || c.Retry.Attempts != 4 || c.Retry.Initial != 10*time.Millisecond || c.RequireNitro {
		t.Fatalf("%+v %v %v", c, err, c.Validate())
	}
	c, err = LoadConfig(write("url = https://h\ninstance_id = imds\nauth = aws\nsigning_key = s\naws_sts_endpoint = https://sts\naws_region = r\naws_server_id = s\n"), false)
	if err != nil || c.Validate() != nil || !c.RequireNitro {
		t.Fatalf("aws: %+v %v", c, err)
	}
	for name, body := range map[string]string{
		"unknown key":   good + "colour = blue\n",
		"no equals":     good + "url\n",
		"bad duration":  good + "retry_max = soon\n",
		"bad retries":   good + "retries = -1\n",
		"plain http":    strings.Replace(good, "https://", "http://", 1),
		"no pinned key": strings.Replace(good, "signing_key = s\n", "", 1),
		"bad instance":  strings.Replace(good, "i-1", "i 1", 1),
		"mtls no cert":  strings.Replace(good, "cert = c\n", "", 1),
		"bad auth":      good + "auth = none\n",
		"aws no sts":    good + "auth = aws\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := LoadConfig(write(body), false)
			if err == nil {
				err = c.Validate()
			}
			if !errors.Is(err, shared.ErrConfigValidation) {
				t.Fatalf("got %v", err)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing"), false); Code(err) != ExitUsage {
		t.Fatalf("missing file: %v", err)
	}
}

func TestRunUsageAndRoot(t *testing.T) {
	run := func(root bool, args ...string) (ExitCode, string) {
		var out bytes.Buffer
		code := Run(context.Background(), args, Env{Getenv: func(string) string { return "" }, Stdout: &out, Stderr: &out, IsRoot: func() bool { return root }})
		return code, out.String()
	}
	for _, tc := range []struct {
		args []string
		root bool
		code ExitCode
		says string
	}{
		{nil, true, ExitUsage, "usage: sk-agent"},
		{[]string{"--help"}, false, ExitOK, "exit codes:"},
		{[]string{"frobnicate"}, true, ExitUsage, "unknown command"},
		{[]string{"mount", "/dev/sdf", "/mnt"}, false, ExitNotRoot, "must run as root"},
		{[]string{"prep-dev", "--no-such-flag", "/dev/sdf"}, true, ExitUsage, "flag provided but not defined"},
		{[]string{"prep-dev", "--config", "/nonexistent/agent.conf", "/dev/sdf"}, true, ExitUsage, "config"},
		{[]string{"mount", "-h"}, true, ExitOK, "--check"},
	} {
		code, out := run(tc.root, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.says) {
			t.Errorf("%v: exit %d, want %d saying %q:\n%s", tc.args, code, tc.code, tc.says, out)
		}
	}
}

func TestParseInterleaved(t *testing.T) {
	fs := newTestFlagSet()
	commands[0].setup(fs) // prep-dev
	pos, err := parseInterleaved(fs, []string{"/dev/sdf", "-a", "/mnt/data", "--delete-all-existing-data", "-f", "ext4"})
	if err != nil || fmt.Sprint(pos) != "[/dev/sdf]" {
		t.Fatalf("%v %v", pos, err)
	}
	if fs.Lookup("a").Value.String() != "/mnt/data" || fs.Lookup("f").Value.String() != "ext4" || fs.Lookup("delete-all-existing-data").Value.String() != "true" {
		t.Fatal("flags after the device were not parsed")
	}
}

func newTestFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// The keyslot KDF: cheap by default (the key is a random secret), what
// the operator asked for otherwise.
func TestKDFArgs(t *testing.T) {
	for _, c := range []struct {
		o    PrepOptions
		want string
	}{
		{PrepOptions{}, "--pbkdf pbkdf2 --pbkdf-force-iterations 1000"},
		{PrepOptions{PBKDF: "argon2id"}, "--pbkdf argon2id"},
		{PrepOptions{PBKDF: "pbkdf2", PBKDFIterations: 5000}, "--pbkdf pbkdf2 --pbkdf-force-iterations 5000"},
		{PrepOptions{PBKDFIterations: 2000}, "--pbkdf-force-iterations 2000"},
	} {
		if got := strings.Join(c.o.kdfArgs(), " "); got != c.want {
			t.Errorf("%+v: %q, want %q", c.o, got, c.want)
		}
	}
}
