package hsm

import (
	"fmt"
	"testing"
)

// Volume-secret operations through the session pool, with and without the
// CMK cache, 2048-bit RSA caller keys:
// go test -run '^$' -bench 'GenerateSecret|DecryptSecret|SignSHA256' ./services/keyworker/
func BenchmarkGenerateSecret(b *testing.B) {
	benchHierarchy(b, func(b *testing.B, h *HSM, ekt []byte) func() error {
		ektCtx, secretCtx, pub := EKTContext("bench"), SecretContext("bench", "i-0", "vol-0"), &testRSAKey().PublicKey
		return func() error {
			_, _, err := h.GenerateSecret(b.Context(), ekt, ektCtx, secretCtx, pub)
			return err
		}
	})
}

func BenchmarkDecryptSecret(b *testing.B) {
	benchHierarchy(b, func(b *testing.B, h *HSM, ekt []byte) func() error {
		ektCtx, secretCtx, pub := EKTContext("bench"), SecretContext("bench", "i-0", "vol-0"), &testRSAKey().PublicKey
		enc, _, err := h.GenerateSecret(b.Context(), ekt, ektCtx, secretCtx, pub)
		if err != nil {
			b.Fatal(err)
		}
		return func() error {
			_, err := h.DecryptSecret(b.Context(), ekt, ektCtx, enc, secretCtx, pub)
			return err
		}
	})
}

func BenchmarkSignSHA256(b *testing.B) {
	h := newHierarchyHSM(b, func(c *Config) { c.Sessions = 1 })
	msg := randBytes(57)
	for b.Loop() {
		if _, err := h.SignSHA256(b.Context(), SigningKeyLabel, msg); err != nil {
			b.Fatal(err)
		}
	}
}

func benchHierarchy(b *testing.B, setup func(*testing.B, *HSM, []byte) func() error) {
	for _, sessions := range []int{1, 4} {
		for _, cache := range []bool{true, false} {
			b.Run(fmt.Sprintf("sessions=%d/cmkcache=%t", sessions, cache), func(b *testing.B) {
				h := newHierarchyHSM(b, func(c *Config) { c.Sessions = sessions })
				if !cache {
					h.hier.cmks.max = -1
				}
				op := setup(b, h, newEKT(b, h, "bench"))
				if err := op(); err != nil { // settles the OAEP path
					b.Fatal(err)
				}
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := op(); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			})
		}
	}
}
