package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
)

// recorder is an Executor that records each call and what arrived on
// stdin, for the steps that need device-mapper (absent where the device
// tests run): the real tools are exercised by the e2e tests up to the
// keyslot; these tests pin the command sequence, the key transport and the
// cleanup on failure.
type recorder struct {
	calls  []call
	answer func(c call) ([]byte, error)
}

type call struct {
	line  string
	stdin []byte
}

func (r *recorder) Run(_ context.Context, stdin *os.File, name string, args ...string) ([]byte, error) {
	c := call{line: strings.Join(append([]string{name}, args...), " ")}
	if stdin != nil {
		c.stdin, _ = io.ReadAll(stdin)
	}
	r.calls = append(r.calls, c)
	if r.answer != nil {
		return r.answer(c)
	}
	return nil, nil
}

func (r *recorder) lines() []string {
	var out []string
	for _, c := range r.calls {
		out = append(out, c.line)
	}
	return out
}

func testAgent(t *testing.T, rec *recorder) *Agent {
	t.Helper()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control")
	if err := os.WriteFile(ctl, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.RunDir = filepath.Join(dir, "run")
	return &Agent{Cfg: cfg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Out: io.Discard, Exec: rec,
		SysRoot: filepath.Join(dir, "sys"), MountsFile: filepath.Join(dir, "mounts"), DMControl: ctl}
}

func testSecret(t *testing.T) *secmem.Buffer {
	t.Helper()
	b, err := secmem.From(bytes.Repeat([]byte{0xa5}, 32))
	if err != nil {
		t.Skipf("cannot lock memory: %v", err)
	}
	t.Cleanup(b.Destroy)
	return b
}

func TestMapAndMount(t *testing.T) {
	secret := testSecret(t)
	v := &volume{volumeUUID: "0a1b"}
	for _, tc := range []struct {
		name    string
		loop    bool
		failOn  string
		want    []string
		wantErr ExitCode
	}{
		{"kernel partition", false, "", []string{
			"cryptsetup open --type luks --key-file - /dev/sdf1 sk-0a1b", "mount /dev/mapper/sk-0a1b MP"}, ExitOK},
		{"mount fails: mapping closed", false, "mount", []string{
			"cryptsetup open --type luks --key-file - /dev/sdf1 sk-0a1b", "mount /dev/mapper/sk-0a1b MP", "cryptsetup close sk-0a1b"}, ExitUnlock},
		{"keyslot refuses: nothing mounted", false, "cryptsetup open", []string{
			"cryptsetup open --type luks --key-file - /dev/sdf1 sk-0a1b"}, ExitUnlock},
		{"loop device remembered", true, "", []string{
			"cryptsetup open --type luks --key-file - /dev/sdf1 sk-0a1b", "mount /dev/mapper/sk-0a1b MP"}, ExitOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{answer: func(c call) ([]byte, error) {
				if tc.failOn != "" && strings.HasPrefix(c.line, tc.failOn) {
					return nil, &ToolError{Tool: "x", Err: errors.New("exit status 1")}
				}
				return nil, nil
			}}
			a := testAgent(t, rec)
			mp := filepath.Join(t.TempDir(), "mnt")
			err := a.mapAndMount(context.Background(), v, "/dev/sdf1", tc.loop, secret, mp)
			if Code(err) != tc.wantErr {
				t.Fatalf("got %v", err)
			}
			got := strings.ReplaceAll(strings.Join(rec.lines(), "\n"), mp, "MP")
			if got != strings.Join(tc.want, "\n") {
				t.Fatalf("calls:\n%s", got)
			}
			// The key travels on stdin only, and is exactly the secret.
			if !bytes.Equal(rec.calls[0].stdin, secret.Bytes()) {
				t.Fatalf("cryptsetup got %x on stdin", rec.calls[0].stdin)
			}
			for _, c := range rec.calls {
				if strings.Contains(c.line, string(secret.Bytes())) || strings.Contains(c.line, "a5a5a5a5") {
					t.Fatalf("secret in arguments: %s", c.line)
				}
			}
			_, err = os.Stat(filepath.Join(a.Cfg.RunDir, "sk-0a1b.loop"))
			if tc.loop != (err == nil) {
				t.Fatalf("loop state file: %v", err)
			}
		})
	}
}

func TestMkfs(t *testing.T) {
	secret := testSecret(t)
	rec := &recorder{}
	a := testAgent(t, rec)
	if err := a.mkfs(context.Background(), &volume{volumeUUID: "u"}, "/dev/loop7", secret, "fat"); err != nil {
		t.Fatal(err)
	}
	want := "cryptsetup open --type luks --key-file - /dev/loop7 sk-u\nmkfs -t vfat /dev/mapper/sk-u\ncryptsetup close sk-u"
	if got := strings.Join(rec.lines(), "\n"); got != want {
		t.Fatalf("calls:\n%s", got)
	}
}

func TestNoDeviceMapper(t *testing.T) {
	rec := &recorder{}
	a := testAgent(t, rec)
	a.DMControl = filepath.Join(t.TempDir(), "absent")
	err := a.mapAndMount(context.Background(), &volume{volumeUUID: "u"}, "/dev/sdf1", false, testSecret(t), "/mnt/x")
	if Code(err) != ExitUnlock || !strings.Contains(err.Error(), "--check") || len(rec.calls) != 0 {
		t.Fatalf("got %v after %v", err, rec.lines())
	}
}

func TestUmount(t *testing.T) {
	for _, tc := range []struct {
		name, mounts, status string
		loop                 bool
		want                 []string
		code                 ExitCode
	}{
		{"sk-agent mapping", "/dev/mapper/sk-u /mnt/data xfs rw 0 0\n", "type:    LUKS2", true,
			[]string{"cryptsetup status sk-u", "umount /mnt/data", "cryptsetup close sk-u", "losetup --detach /dev/loop9"}, ExitOK},
		{"original agent's random name", "/dev/mapper/JplNSC3yLBebsKGp /mnt/data xfs rw 0 0\n", "type:    LUKS1", false,
			[]string{"cryptsetup status JplNSC3yLBebsKGp", "umount /mnt/data", "cryptsetup close JplNSC3yLBebsKGp"}, ExitOK},
		{"not LUKS (LVM)", "/dev/mapper/vg-root /mnt/data ext4 rw 0 0\n", "type:    n/a", false,
			[]string{"cryptsetup status vg-root"}, ExitDevice},
		{"not a dm device", "/dev/sda1 /mnt/data ext4 rw 0 0\n", "", false, nil, ExitDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{answer: func(c call) ([]byte, error) {
				if strings.HasPrefix(c.line, "cryptsetup status") {
					return []byte("/dev/mapper/x is active.\n  " + tc.status + "\n"), nil
				}
				return nil, nil
			}}
			a := testAgent(t, rec)
			if err := os.WriteFile(a.MountsFile, []byte(tc.mounts), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.loop {
				os.MkdirAll(a.Cfg.RunDir, 0o700)
				os.WriteFile(filepath.Join(a.Cfg.RunDir, "sk-u.loop"), []byte("/dev/loop9\n"), 0o600)
			}
			err := a.Umount(context.Background(), UmountOptions{Target: "/mnt/data/"})
			if Code(err) != tc.code || strings.Join(rec.lines(), "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("err %v calls %v", err, rec.lines())
			}
			if _, err := os.Stat(filepath.Join(a.Cfg.RunDir, "sk-u.loop")); err == nil {
				t.Fatal("loop state file left behind")
			}
		})
	}
}
