package unseal

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
)

// v1Lines makes shares the way sovkeys made them before v2 (the lines
// custodians and `.unseal-shares` files already hold).
func v1Lines(t *testing.T, pin, pool string, n, k int) []string {
	t.Helper()
	parts, err := shamir.Split([]byte(pin), n, k)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = fmt.Sprintf("sovkeys-share:v1:%s:%d:%d:%s", pool, k, p.X, base64.RawURLEncoding.EncodeToString(p.Y))
	}
	return out
}

func parseAll(t *testing.T, lines ...string) []Share {
	t.Helper()
	out := make([]Share, len(lines))
	for i, l := range lines {
		s, err := Parse(l)
		if err != nil {
			t.Fatalf("parse %q: %v", l, err)
		}
		out[i] = s
	}
	return out
}

func TestV2SharesCombineAndRoundTrip(t *testing.T) {
	t.Parallel()
	const pin = "1234-secret-pin"
	shares, err := SplitPIN(pin, "p1", 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shares {
		line := s.Encode()
		if !strings.HasPrefix(line, "sovkeys-share:v2:p1:3:") || strings.Contains(line, pin) {
			t.Fatalf("line %q", line)
		}
		back := parseAll(t, line)[0]
		if back.Encode() != line || back.Set != shares[0].Set {
			t.Fatalf("round trip %q -> %q", line, back.Encode())
		}
	}
	for _, pick := range [][]int{{0, 1, 2}, {4, 2, 0}, {1, 3, 4, 0}} {
		var set []Share
		for _, i := range pick {
			set = append(set, shares[i])
		}
		got, err := Combine(set)
		if err != nil || string(got) != pin {
			t.Fatalf("combine %v = %q, %v", pick, got, err)
		}
	}
}

// Lines made by the previous release (no check value) still unseal.
func TestV1LinesStillCombine(t *testing.T) {
	t.Parallel()
	lines := v1Lines(t, "old-pin-1234", "default", 3, 2)
	got, err := Combine(parseAll(t, lines[0], lines[2]))
	if err != nil || string(got) != "old-pin-1234" {
		t.Fatalf("v1 combine = %q, %v", got, err)
	}
}

// A wrong combination of v2 shares is caught before any login: an altered
// share, shares relabelled to another pool or threshold, fewer shares
// than the split's k, shares of two splits.
func TestCheckValueCatchesWrongCombinations(t *testing.T) {
	t.Parallel()
	a, err := SplitPIN("pin-of-a-1234", "p1", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := SplitPIN("pin-of-b-5678", "p1", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	three, err := SplitPIN("pin-of-c-9999", "p1", 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	altered := a[1]
	altered.Share.Y = append([]byte(nil), altered.Share.Y...)
	altered.Share.Y[0] ^= 1
	relabel := func(f func(*Share)) []Share {
		out := []Share{a[0], a[1]}
		for i := range out {
			f(&out[i])
		}
		return out
	}
	for name, tc := range map[string]struct {
		shares []Share
		want   error
	}{
		"altered share":       {[]Share{a[0], altered}, ErrCheck},
		"relabelled pool":     {relabel(func(s *Share) { s.Pool = "p2" }), ErrCheck},
		"relabelled k":        {relabel(func(s *Share) { s.Threshold = 3 }), ErrCheck},
		"too few shares":      {[]Share{three[0], three[1]}, ErrCheck},
		"two splits":          {[]Share{a[0], b[1]}, ErrShare},
		"same index twice":    {[]Share{a[0], a[0]}, ErrShare},
		"v1 mixed with v2":    {append(parseAll(t, v1Lines(t, "x-pin", "p1", 3, 2)[0]), a[1]), ErrShare},
		"other pool in a set": {[]Share{a[0], {Version: 2, Pool: "p2", Threshold: 2, Set: a[0].Set, Share: a[1].Share}}, ErrShare},
	} {
		t.Run(name, func(t *testing.T) {
			if pin, err := Combine(tc.shares); !errors.Is(err, tc.want) {
				t.Fatalf("Combine = %q, %v; want %v", pin, err, tc.want)
			}
		})
	}
}

func TestParseRefusesMalformed(t *testing.T) {
	t.Parallel()
	good, err := SplitPIN("pin-1234", "p1", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := good[0].Encode()
	for _, bad := range []string{
		"", "hello", "sovkeys-share:v3:p1:2:1:AAAA",
		"sovkeys-share:v1:p1:2:1", "sovkeys-share:v1:P1:2:1:AAAA", "sovkeys-share:v1:p1:1:1:AAAA",
		"sovkeys-share:v1:p1:2:0:AAAA", "sovkeys-share:v1:p1:2:256:AAAA", "sovkeys-share:v1:p1:2:1:",
		"sovkeys-share:v1:p1:2:1:!!", strings.Replace(line, "v2:", "v1:", 1),
		"sovkeys-share:v2:p1:2:1:AAAA", // no set id
		strings.Replace(line, good[0].Set, "short", 1),
		line[:len(line)-30], // y shorter than the check value
	} {
		if _, err := Parse(bad); !errors.Is(err, ErrShare) {
			t.Errorf("Parse(%q) = %v, want ErrShare", bad, err)
		}
	}
}

// FuzzParse: no input panics, and what parses encodes back to a line that
// parses to the same share.
func FuzzParse(f *testing.F) {
	shares, err := SplitPIN("fuzz-pin-1234", "default", 3, 2)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shares[0].Encode())
	f.Add("sovkeys-share:v1:default:2:1:AAAA")
	f.Add("sovkeys-share:v2:p:255:255:AAAAAAAAAAAAAAAA:" + strings.Repeat("A", 30))
	f.Fuzz(func(t *testing.T, line string) {
		s, err := Parse(line)
		if err != nil {
			return
		}
		back, err := Parse(s.Encode())
		if err != nil || back.Encode() != s.Encode() {
			t.Fatalf("%q -> %q -> %v", line, s.Encode(), err)
		}
	})
}
