// Package shamir splits a secret into n shares of which any k rebuild it
// (Shamir's secret sharing over GF(2^8), one polynomial per byte). Fewer
// than k shares reveal nothing about the secret.
package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
)

// ErrShares is wrapped by every error of this package.
var ErrShares = errors.New("shamir: invalid shares")

// Share is one share: its x coordinate (1..255) and one y byte per secret byte.
type Share struct {
	X byte
	Y []byte
}

// gfMul multiplies in GF(2^8) with the AES polynomial, in constant time.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= -(b & 1) & a
		hi := -(a >> 7)
		a = (a << 1) ^ (0x1b & hi)
		b >>= 1
	}
	return p
}

// gfInv is a^254 = a^-1 (0 maps to 0).
func gfInv(a byte) byte {
	r := byte(1)
	for range 254 {
		r = gfMul(r, a)
	}
	return r
}

// Split makes n shares of secret, any k of which rebuild it (2 <= k <= n <= 255).
func Split(secret []byte, n, k int) ([]Share, error) {
	if len(secret) == 0 || k < 2 || k > n || n > 255 {
		return nil, fmt.Errorf("%w: need a secret and 2 <= threshold <= shares <= 255", ErrShares)
	}
	shares := make([]Share, n)
	for i := range shares {
		shares[i] = Share{X: byte(i + 1), Y: make([]byte, len(secret))}
	}
	coeffs := make([]byte, k)
	for bi, sb := range secret {
		coeffs[0] = sb
		if _, err := rand.Read(coeffs[1:]); err != nil {
			return nil, err
		}
		for i := range shares {
			x := shares[i].X
			// Horner: ((c[k-1] x + c[k-2]) x + ...) x + c[0]
			var y byte
			for j := k - 1; j >= 0; j-- {
				y = gfMul(y, x) ^ coeffs[j]
			}
			shares[i].Y[bi] = y
		}
	}
	clear(coeffs)
	return shares, nil
}

// Combine rebuilds the secret from k or more distinct shares (Lagrange
// interpolation at 0). Wrong or too few shares give a wrong secret: callers
// must check the result (e.g. by logging in to the HSM).
func Combine(shares []Share) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("%w: need at least 2 shares", ErrShares)
	}
	n := len(shares[0].Y)
	seen := map[byte]bool{}
	for _, s := range shares {
		if s.X == 0 || seen[s.X] || len(s.Y) != n || n == 0 {
			return nil, fmt.Errorf("%w: duplicate, zero-index or unequal shares", ErrShares)
		}
		seen[s.X] = true
	}
	secret := make([]byte, n)
	for i, si := range shares {
		// Lagrange basis at 0: prod_{j!=i} x_j / (x_j - x_i); subtraction is xor.
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if i == j {
				continue
			}
			num = gfMul(num, sj.X)
			den = gfMul(den, sj.X^si.X)
		}
		l := gfMul(num, gfInv(den))
		for b := range secret {
			secret[b] ^= gfMul(si.Y[b], l)
		}
	}
	return secret, nil
}
