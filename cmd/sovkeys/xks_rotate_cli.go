package main

// sovkeys xks key rotate | xks key version ...: rotation of an XKS key and
// the life of its old versions. The work and its audit record happen in
// the pool's keyworker (key_version admin endpoint); this file only finds
// the key in the registry and asks.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

const xksKeyVersionUsage = `usage:
  sovkeys xks key rotate --keystore PREFIX --id KEYID
  sovkeys xks key rotate --keystore PREFIX --id KEYID --every 2160h   (rotate automatically; --every 0 stops)
  sovkeys xks key version list --keystore PREFIX --id KEYID
  sovkeys xks key version decrypt-only|disable|enable --keystore PREFIX --id KEYID --version N
  sovkeys xks key version destroy --keystore PREFIX --id KEYID --version N [--confirm CODE]
    (destroy a disabled version: first without --confirm to get CODE, then with it)
`

// isXKSKeyVersionCommand reports whether args (after "xks") belong here.
func isXKSKeyVersionCommand(args []string) bool {
	return len(args) >= 2 && args[0] == "key" && (args[1] == "rotate" || args[1] == "version")
}

// runXKSKeyVersion runs `xks key rotate` and `xks key version <action>`;
// args start at "key".
func runXKSKeyVersion(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if !isXKSKeyVersionCommand(args) {
		return errUsage
	}
	action, rest := kwadmin.VersionRotate, args[2:]
	if args[1] == "version" {
		if len(rest) == 0 {
			fmt.Fprint(stderr, xksKeyVersionUsage)
			return errUsage
		}
		action, rest = rest[0], rest[1:]
		switch action {
		case kwadmin.VersionList, kwadmin.VersionDecryptOnly, kwadmin.VersionDisable, kwadmin.VersionEnable, kwadmin.VersionDestroy:
		default:
			fmt.Fprint(stderr, xksKeyVersionUsage)
			return fmt.Errorf("unknown key version action %q: %w", action, errUsage)
		}
	}
	fs := flag.NewFlagSet("xks key "+args[1], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn connFlags
	var topo topologyFlags
	conn.register(fs, getenv)
	topo.register(fs)
	prefix := fs.String("keystore", "", "key store URI prefix")
	keyID := fs.String("id", "", "XKS key id")
	version := fs.Int("version", 0, "key version (decrypt-only, disable, enable, destroy)")
	confirm := fs.String("confirm", "", "destroy: the code the first step printed")
	every := fs.Duration("every", -1, "rotate: set the automatic rotation period instead of rotating now (e.g. 2160h; 0 stops)")
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	needsVersion := action != kwadmin.VersionRotate && action != kwadmin.VersionList
	switch {
	case *keyID == "":
		return fmt.Errorf("%w: --id is required", shared.ErrConfigValidation)
	case needsVersion && *version < 1:
		return fmt.Errorf("%w: --version N (>= 1) is required", shared.ErrConfigValidation)
	case !needsVersion && *version != 0:
		return fmt.Errorf("%w: --version applies to old versions only", shared.ErrConfigValidation)
	case action != kwadmin.VersionDestroy && *confirm != "":
		return fmt.Errorf("%w: --confirm applies to destroy only", shared.ErrConfigValidation)
	case *every >= 0 && action != kwadmin.VersionRotate:
		return fmt.Errorf("%w: --every applies to rotate only", shared.ErrConfigValidation)
	case *every > 0 && *every%time.Second != 0:
		return fmt.Errorf("%w: --every must be whole seconds", shared.ErrConfigValidation)
	}
	var everySeconds int64
	if *every >= 0 {
		action, everySeconds = kwadmin.VersionSchedule, int64(*every/time.Second)
	}
	store := strings.Trim(*prefix, "/")

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, js, err := mesh.Connect(ctx, conn.config("sovkeys-cli"), logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg, err := registry.Open(ctx, js, topo.t)
	if err != nil {
		return err
	}
	ks, _, err := reg.Keystore(ctx, store)
	if err != nil {
		return fmt.Errorf("key store %q: %w", store, err)
	}
	key, _, err := reg.Key(ctx, store, *keyID)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no key %q in key store %q", *keyID, store)
	}
	if err != nil {
		return err
	}
	req := kwadmin.KeyVersionRequest{Label: key.Label, Action: action, Version: *version, Confirm: *confirm, EverySeconds: everySeconds,
		Keystore: store, KeyID: *keyID, Operator: operatorName(getenv)}
	var resp kwadmin.KeyVersionResponse
	if err := kwadmin.Call(ctx, nc, ks.Pool, kwadmin.EndpointKeyVersion, req, &resp); err != nil {
		return fmt.Errorf("key %q: %s: %w", *keyID, action, err)
	}
	if action == kwadmin.VersionDestroy && !resp.Destroyed {
		fmt.Fprintf(stderr, "nothing destroyed yet: ciphertexts of version %d will never decrypt again once it is.\n"+
			"to destroy it, run the same command with --confirm %s\n", *version, resp.Confirm)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(xksKeyVersionsOut{KeyID: *keyID, Keystore: "/" + store, Label: resp.Label, Versions: resp.Versions,
		Changed: resp.Changed, Confirm: resp.Confirm, Destroyed: resp.Destroyed,
		RotateEvery: time.Duration(resp.RotateEverySeconds * int64(time.Second)).String(), NextRotation: resp.NextRotation})
}

type xksKeyVersionsOut struct {
	KeyID     string                   `json:"keyId"`
	Keystore  string                   `json:"keystore"`
	Label     string                   `json:"label"`
	Versions  []kwadmin.KeyVersionInfo `json:"versions"`
	Changed   int                      `json:"changed,omitempty"`
	Confirm   string                   `json:"confirm,omitempty"`
	Destroyed bool                     `json:"destroyed,omitempty"`
	// RotateEvery is "0s" when the key has no automatic rotation.
	RotateEvery  string `json:"rotateEvery"`
	NextRotation string `json:"nextRotation,omitempty"`
}

// operatorName is who the audit record names: user@host.
func operatorName(getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = "unknown"
	}
	host, _ := os.Hostname()
	return user + "@" + host
}
