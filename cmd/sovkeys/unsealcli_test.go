package main

import (
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// `sovkeys unseal` refuses bad input before anything is stored: a
// malformed share, shares of two splits, a pinned fingerprint no sealed
// keyworker published, and any share when no keyworker of the pool is
// sealed (the node's keyworker is unsealed: nothing to encrypt to).
func TestUnsealCLIRefusesBadInput(t *testing.T) {
	n := testNode
	a, err := unseal.SplitPIN("some-pin-1234", "default", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := unseal.SplitPIN("other-pin-5678", "default", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"malformed":        {[]string{"unseal", "--share", "sovkeys-share:v2:default:2:1:nope"}, "invalid share"},
		"two splits":       {[]string{"unseal", "--share", a[0].Encode(), "--share", b[1].Encode()}, "different splits"},
		"no sealed worker": {[]string{"unseal", "--share", a[0].Encode()}, "no sealed keyworker"},
		"pinned mismatch":  {[]string{"unseal", "--keyworker-key", "0123456789abcdef", "--share", a[0].Encode()}, "no sealed keyworker"},
	} {
		t.Run(name, func(t *testing.T) {
			err := n.cliErr(nil, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("sovkeys %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}
	var st struct {
		Pool   string `json:"pool"`
		Sealed []struct {
			Keyworker string `json:"keyworker"`
		} `json:"sealed_keyworkers"`
		FailedLogins int `json:"failed_logins_last_hour"`
	}
	n.cli(t, &st, "unseal", "status", "--pool", "default")
	if st.Pool != "default" || len(st.Sealed) != 0 || st.FailedLogins != 0 {
		t.Fatalf("unseal status of an unsealed node: %+v", st)
	}
}
