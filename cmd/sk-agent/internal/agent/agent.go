// Package agent is sk-agent's logic: preparing, unlocking, mounting and
// taking over sovkeys volumes with the volume-secret API. cmd/sk-agent only
// calls Run. See docs/agent.md.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// VolumeAPI is the part of the volume-secret client the agent uses; every
// method verifies the service's signatures against the pinned key.
type VolumeAPI interface {
	GenerateSecretSigned(ctx context.Context, instanceID, volumeUUID string) ([]byte, vsclient.SignedBlob, error)
	DecryptSecret(ctx context.Context, instanceID, volumeUUID string, encryptedSecret []byte) ([]byte, error)
	ConvertSecretSigned(ctx context.Context, instanceID, sourceInstanceID, volumeUUID string, encryptedSecret []byte) (vsclient.SignedBlob, error)
	VerifyBlob(b vsclient.SignedBlob) error
}

var _ VolumeAPI = (*vsclient.Client)(nil)

// Executor runs the system tools (cryptsetup, sgdisk, mkfs, mount,
// losetup). stdin carries a secret when non-nil; it is never an argument.
type Executor interface {
	Run(ctx context.Context, stdin *os.File, name string, args ...string) ([]byte, error)
}

// Agent carries what every command needs.
type Agent struct {
	Cfg Config
	Log *slog.Logger
	// Out receives the operator-facing progress lines.
	Out   io.Writer
	Now   func() time.Time
	Sleep func(context.Context, time.Duration) error
	Exec  Executor
	// API is built from Cfg on first use when nil.
	API VolumeAPI
	// HTTP is the client API uses (for check-key).
	HTTP *http.Client
	// SysRoot and MountsFile locate sysfs and the mount table.
	SysRoot, MountsFile string
	// DMControl is the device-mapper control node (default /dev/mapper/control).
	DMControl string
	DryRun    bool

	instanceID string
}

// step prints one progress line "what... OK|NOK" around f.
func (a *Agent) step(what string, f func() error) error {
	fmt.Fprintf(a.Out, "%-70s", what+"...")
	err := f()
	if err != nil {
		fmt.Fprintln(a.Out, "NOK")
		return err
	}
	fmt.Fprintln(a.Out, "OK")
	return nil
}

func (a *Agent) planned(what string) { fmt.Fprintf(a.Out, "dry-run: would %s\n", what) }

// api returns the service client, building it from the configuration.
func (a *Agent) api(ctx context.Context) (VolumeAPI, error) {
	if a.API != nil {
		return a.API, nil
	}
	if err := a.Cfg.Validate(); err != nil {
		return nil, err
	}
	der, err := a.Cfg.signingKeyDER()
	if err != nil {
		return nil, err
	}
	var c *vsclient.Client
	switch a.Cfg.Auth {
	case "aws":
		c, err = vsclient.NewAWS(vsclient.AWSConfig{BaseURL: a.Cfg.URL, CAFile: a.Cfg.CA, SigningKeyDER: der,
			Instance: &vsclient.AWSInstance{STSEndpoint: a.Cfg.AWSSTSEndpoint, Region: a.Cfg.AWSRegion,
				ServerID: a.Cfg.AWSServerID, Tenant: a.Cfg.AWSTenant, Now: a.Now}})
	default:
		c, err = vsclient.New(vsclient.Config{BaseURL: a.Cfg.URL, CertFile: a.Cfg.Cert, KeyFile: a.Cfg.Key, CAFile: a.Cfg.CA, SigningKeyDER: der})
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	c.RSABits = a.Cfg.RSABits
	a.API, a.HTTP = c, c.HTTP
	return c, nil
}

// instance returns this instance's id (from the configuration or IMDS).
func (a *Agent) instance(ctx context.Context) (string, error) {
	if a.instanceID != "" {
		return a.instanceID, nil
	}
	id := a.Cfg.InstanceID
	if id == "imds" {
		var err error
		err = a.Cfg.Retry.call(ctx, a.Log, a.Sleep, "instance metadata", func(ctx context.Context) error {
			id, err = imdsInstanceID(ctx)
			return err
		})
		if err != nil {
			return "", err
		}
	}
	a.instanceID = id
	return id, nil
}

// checkPlatform is the original's Nitro check: on EC2 Nitro the board
// asset tag is the instance id.
func (a *Agent) checkPlatform(ctx context.Context, ignore bool) error {
	if !a.Cfg.RequireNitro || ignore {
		return nil
	}
	id, err := a.instance(ctx)
	if err != nil {
		return err
	}
	tag, _ := os.ReadFile(filepath.Join(a.SysRoot, "devices/virtual/dmi/id/board_asset_tag"))
	if strings.TrimSpace(string(tag)) != id {
		return fmt.Errorf("%w: this is not a Nitro-based EC2 instance (board asset tag is not %s); sovkeys' isolation depends on Nitro; --ignore-nitro-check skips this check", ErrPlatform, id)
	}
	return nil
}

// SystemExec runs tools found in PATH plus /usr/sbin and /sbin (a boot-time
// unit may have a short PATH).
type SystemExec struct{}

// Run runs name with args; the error carries the tool's stderr.
func (SystemExec) Run(ctx context.Context, stdin *os.File, name string, args ...string) ([]byte, error) {
	path, err := toolPath(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), &ToolError{Tool: name, Args: args, Err: err, Stderr: msg}
	}
	return stdout.Bytes(), nil
}

// toolPath finds a system tool in PATH, /usr/sbin, /sbin, /usr/bin, /bin.
func toolPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not installed", ErrUsage, name)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// ToolError is a failed external tool.
type ToolError struct {
	Tool   string
	Args   []string
	Err    error
	Stderr string
}

func (e *ToolError) Error() string {
	return fmt.Sprintf("%s %s: %v: %s", e.Tool, strings.Join(e.Args, " "), e.Err, e.Stderr)
}

func (e *ToolError) Unwrap() error { return e.Err }

// ExitStatus is the tool's exit status, or -1.
func (e *ToolError) ExitStatus() int {
	var x *exec.ExitError
	if errors.As(e.Err, &x) {
		return x.ExitCode()
	}
	return -1
}
