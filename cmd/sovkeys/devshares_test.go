package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// A `.unseal-shares` file written by an earlier release (v1 lines) still
// unseals a standalone node; a v2 file whose shares were altered is refused
// before the PIN reaches C_Login.
func TestDevSharesFileVersions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const pin = "0123456789abcdef0123456789abcdef"
	parts, err := shamir.Split([]byte(pin), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	var v1 strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&v1, "sovkeys-share:v1:default:2:%d:%s\n", p.X, base64.RawURLEncoding.EncodeToString(p.Y))
	}
	old := filepath.Join(dir, "v1")
	if err := os.WriteFile(old, []byte(v1.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readDevShares(old); err != nil || got != pin {
		t.Fatalf("v1 dev file: %q, %v", got, err)
	}

	shares, err := unseal.SplitPIN(pin, "default", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	v2 := filepath.Join(dir, "v2")
	if err := writeDevShares(v2, data, shares); err != nil {
		t.Fatal(err)
	}
	if got, err := readDevShares(v2); err != nil || got != pin {
		t.Fatalf("v2 dev file: %q, %v", got, err)
	}
	shares[1].Share.Y[0] ^= 1
	if err := writeDevShares(v2, data, shares); err != nil {
		t.Fatal(err)
	}
	if _, err := readDevShares(v2); !errors.Is(err, unseal.ErrCheck) {
		t.Fatalf("altered v2 dev file: %v, want the check value to refuse it", err)
	}
}
