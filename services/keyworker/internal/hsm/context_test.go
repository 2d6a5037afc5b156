package hsm

import (
	"bytes"
	"testing"
)

func TestContextEncoding(t *testing.T) {
	tests := []struct {
		name string
		a, b []byte
	}{
		{"field boundary", SecretContext("a", "bc", "d"), SecretContext("ab", "c", "d")},
		{"volume", SecretContext("t", "i", "v1"), SecretContext("t", "i", "v2")},
		{"instance", SecretContext("t", "i1", "v"), SecretContext("t", "i2", "v")},
		{"tenant", SecretContext("t1", "i", "v"), SecretContext("t2", "i", "v")},
		{"empty fields", SecretContext("", "", "x"), SecretContext("", "x", "")},
		{"ekt name", EKTContext("a"), EKTContext("b")},
		{"kinds", EKTContext(""), SecretContext("", "", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if bytes.Equal(tt.a, tt.b) {
				t.Fatalf("contexts collide: %x", tt.a)
			}
		})
	}
	if !bytes.Equal(SecretContext("t", "i", "v"), SecretContext("t", "i", "v")) {
		t.Error("SecretContext is not deterministic")
	}
}
