package shamir

import (
	"bytes"
	"testing"
)

func TestSplitCombine(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef0123456789abcdef")
	for _, tc := range []struct{ n, k int }{{2, 2}, {3, 2}, {5, 3}, {10, 10}} {
		shares, err := Split(secret, tc.n, tc.k)
		if err != nil {
			t.Fatal(err)
		}
		// Every window of k consecutive shares rebuilds the secret.
		for start := 0; start+tc.k <= tc.n; start++ {
			got, err := Combine(shares[start : start+tc.k])
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d start=%d: %x %v", tc.n, tc.k, start, got, err)
			}
		}
		if tc.k > 2 {
			if got, _ := Combine(shares[:tc.k-1]); bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d: fewer than k shares rebuilt the secret", tc.n, tc.k)
			}
		}
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	if _, err := Split([]byte("x"), 2, 3); err == nil {
		t.Fatal("k > n accepted")
	}
	if _, err := Split(nil, 3, 2); err == nil {
		t.Fatal("empty secret accepted")
	}
	s, _ := Split([]byte("abc"), 3, 2)
	if _, err := Combine([]Share{s[0], s[0]}); err == nil {
		t.Fatal("duplicate share accepted")
	}
	if _, err := Combine(s[:1]); err == nil {
		t.Fatal("one share accepted")
	}
}

func TestGF(t *testing.T) {
	t.Parallel()
	for a := 1; a < 256; a++ {
		if gfMul(byte(a), gfInv(byte(a))) != 1 {
			t.Fatalf("inverse of %d", a)
		}
	}
}
