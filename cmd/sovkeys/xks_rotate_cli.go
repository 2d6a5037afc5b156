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
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// keyVersionFlags are the flags of the rotate and version commands.
type keyVersionFlags struct {
	prefix, keyID, confirm string
	version                int
	every                  time.Duration
}

func (f *keyVersionFlags) keyFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.prefix, "keystore", "", "key store URI prefix")
	fs.StringVar(&f.keyID, "id", "", "XKS key id")
}

func (f *keyVersionFlags) versionFlags(fs *flag.FlagSet) {
	f.keyFlags(fs)
	fs.IntVar(&f.version, "version", 0, "key version (>= 1, not the newest)")
}

// xksKeyVersionCommands are the rows of `xks key rotate` and `xks key
// version ...` in the command table.
func xksKeyVersionCommands() []command {
	run := func(action string) func(ctx context.Context, o *operator, f *keyVersionFlags) error {
		return func(ctx context.Context, o *operator, f *keyVersionFlags) error { return o.keyVersion(ctx, action, f) }
	}
	return []command{
		operatorCommand("xks key rotate", "--keystore PREFIX --id KEYID [--every DURATION]",
			"make a new HSM key version; encrypts use it, older ciphertexts still decrypt (--every: rotate automatically, 0 stops)",
			func(f *keyVersionFlags, fs *flag.FlagSet) {
				f.keyFlags(fs)
				fs.DurationVar(&f.every, "every", -1, "set the automatic rotation period instead of rotating now (e.g. 2160h; 0 stops)")
			}, run(kwadmin.VersionRotate)),
		operatorCommand("xks key version list", "--keystore PREFIX --id KEYID", "list a key's versions and their states",
			(*keyVersionFlags).keyFlags, run(kwadmin.VersionList)),
		operatorCommand("xks key version decrypt-only", "--keystore PREFIX --id KEYID --version N", "let an old version decrypt but never encrypt",
			(*keyVersionFlags).versionFlags, run(kwadmin.VersionDecryptOnly)),
		operatorCommand("xks key version disable", "--keystore PREFIX --id KEYID --version N", "refuse every use of an old version",
			(*keyVersionFlags).versionFlags, run(kwadmin.VersionDisable)),
		operatorCommand("xks key version enable", "--keystore PREFIX --id KEYID --version N", "let a disabled old version decrypt again",
			(*keyVersionFlags).versionFlags, run(kwadmin.VersionEnable)),
		operatorCommand("xks key version destroy", "--keystore PREFIX --id KEYID --version N [--confirm CODE]",
			"destroy a disabled old version: first without --confirm to get CODE, then with it",
			func(f *keyVersionFlags, fs *flag.FlagSet) {
				f.versionFlags(fs)
				fs.StringVar(&f.confirm, "confirm", "", "the code the first step printed")
			}, run(kwadmin.VersionDestroy)),
	}
}

// keyVersion asks the key's pool keyworker to rotate or change a version;
// the keyworker does the work and audits it with the version.
func (o *operator) keyVersion(ctx context.Context, action string, f *keyVersionFlags) error {
	needsVersion := action != kwadmin.VersionRotate && action != kwadmin.VersionList
	switch {
	case f.keyID == "":
		return fmt.Errorf("%w: --id is required", shared.ErrConfigValidation)
	case needsVersion && f.version < 1:
		return fmt.Errorf("%w: --version N (>= 1) is required", shared.ErrConfigValidation)
	case f.every > 0 && f.every%time.Second != 0:
		return fmt.Errorf("%w: --every must be whole seconds", shared.ErrConfigValidation)
	}
	var everySeconds int64
	if action == kwadmin.VersionRotate && f.every >= 0 {
		action, everySeconds = kwadmin.VersionSchedule, int64(f.every/time.Second)
	}
	store := strings.Trim(f.prefix, "/")
	ks, _, err := o.reg.Keystore(ctx, store)
	if err != nil {
		return fmt.Errorf("key store %q: %w", store, err)
	}
	key, _, err := o.reg.Key(ctx, store, f.keyID)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no key %q in key store %q", f.keyID, store)
	}
	if err != nil {
		return err
	}
	req := kwadmin.KeyVersionRequest{Label: key.Label, Action: action, Version: f.version, Confirm: f.confirm, EverySeconds: everySeconds,
		Keystore: store, KeyID: f.keyID, Operator: o.who()}
	var resp kwadmin.KeyVersionResponse
	if err := kwadmin.Call(ctx, o.nc, ks.Pool, kwadmin.EndpointKeyVersion, req, &resp); err != nil {
		return fmt.Errorf("key %q: %s: %w", f.keyID, action, err)
	}
	if resp.Pending != "" {
		fmt.Fprintf(o.errOut, "request %s waits for approval: %d of %d people have signed (%s).\n"+
			"another person with the admin role runs: sovkeys approve %s\n", resp.Pending, len(resp.Signers), resp.Need,
			strings.Join(resp.Signers, ", "), resp.Pending)
	} else if action == kwadmin.VersionDestroy && !resp.Destroyed {
		fmt.Fprintf(o.errOut, "nothing destroyed yet: ciphertexts of version %d will never decrypt again once it is.\n"+
			"to destroy it, run the same command with --confirm %s\n", f.version, resp.Confirm)
	}
	enc := json.NewEncoder(o.out)
	enc.SetIndent("", "  ")
	return enc.Encode(xksKeyVersionsOut{KeyID: f.keyID, Keystore: "/" + store, Label: resp.Label, Versions: resp.Versions,
		Changed: resp.Changed, Confirm: resp.Confirm, Destroyed: resp.Destroyed,
		RotateEvery: time.Duration(resp.RotateEverySeconds * int64(time.Second)).String(), NextRotation: resp.NextRotation,
		Pending: resp.Pending, Need: resp.Need, Signers: resp.Signers})
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
	// Pending is the id of the request waiting for approval (quorum).
	Pending string   `json:"pending,omitempty"`
	Need    int      `json:"need,omitempty"`
	Signers []string `json:"signers,omitempty"`
}
