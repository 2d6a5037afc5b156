package clusterinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sovkeys/sovkeys/shared"
)

// Work keys: authn signs the work it queues (shared/envelope_sig.go) with
// a key cluster init makes once, DIR/creds/authn.workkey (0600, for authn
// only: `sovkeys authn --work-key`, by default beside its --creds), and
// lists by public key in DIR/trust/workkeys.json, which `sovkeys init` (the
// bootstrap identity) pins in the roster bucket. Keyworkers refuse work
// signed by any other key.

// WorkKeysFile lists the pinned work keys beside the bootstrap credential.
const WorkKeysFile = "workkeys.json"

// EnsureWorkKeys makes authn's work key under dir if missing and writes
// the list of pinned keys; it returns the key file.
func EnsureWorkKeys(dir string, res *Result) (string, error) {
	path := filepath.Join(dir, "creds", shared.WorkKeyFile)
	pub, created, err := shared.EnsureWorkKey(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInit, err)
	}
	if created {
		res.Written = append(res.Written, path)
	}
	b, _ := json.MarshalIndent([]string{pub}, "", "  ")
	if err := writeIfChanged(filepath.Join(dir, "trust", WorkKeysFile), append(b, '\n'), 0o644, res); err != nil {
		return "", err
	}
	return path, nil
}

// ReadWorkKeys reads a workkeys.json (none when the file is missing).
func ReadWorkKeys(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	var out []string
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInit, path, err)
	}
	return out, nil
}
