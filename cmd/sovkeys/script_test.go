package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// The documented curl + openssl flow works against a real node.
func TestVolumeSecretShellScript(t *testing.T) {
	for _, tool := range []string{"curl", "openssl", "jq", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (make deps installs it): %v", tool, err)
		}
	}
	n := testNode
	n.cli(t, nil, "tenant", "create", "--id", "vpc-script", "--require-request-signatures") // the example signs
	dir := filepath.Join(t.TempDir(), "cert")
	n.cli(t, nil, "instance", "issue-cert", "--tenant", "vpc-script", "--instance", "i-script", "--out", dir)
	var out []byte
	testkit.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		cmd := exec.Command("bash", "../../docs/examples/volume-secret.sh")
		cmd.Env = append(os.Environ(), "GATEWAY="+n.gateway, "TLS_CA="+filepath.Join(n.dir, "tls", "ca.pem"),
			"CERT_DIR="+dir, "INSTANCE=i-script", "VOLUME=vol-script")
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("script output:\n%s", out)
	}
	gen := strings.TrimPrefix(lines[0], "generate-secret: ")
	dec := strings.TrimPrefix(lines[1], "decrypt-secret: ")
	if len(gen) != 64 || gen != dec {
		t.Fatalf("secrets differ or are not 32 bytes:\n%s", out)
	}
	if !strings.HasPrefix(lines[2], "other volume: ") || strings.Contains(lines[2], "null") {
		t.Fatalf("moved secret error not clear:\n%s", out)
	}
}
