package testkit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// LookTool finds a system tool: on PATH, else in the sbin and bin
// directories a non-root PATH may lack (cryptsetup, losetup, mkfs...).
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(d, name); FileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// FileExists reports whether p exists.
func FileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// RunTool runs a system tool (stdin optional) and returns its trimmed
// stdout; a failure fails the test with the tool's stderr.
func RunTool(t testing.TB, stdin []byte, name string, args ...string) string {
	t.Helper()
	p, err := LookTool(name)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}
