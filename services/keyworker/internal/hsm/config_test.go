package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestHSMConfigValidate(t *testing.T) {
	ok := Config{ModulePath: "/m.so", TokenLabel: "tok", PIN: "1234"}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr bool
	}{
		{"valid", func(*Config) {}, false},
		{"default sessions", func(c *Config) { c.Sessions = 0 }, false},
		{"sessions set", func(c *Config) { c.Sessions = 16 }, false},
		{"no module", func(c *Config) { c.ModulePath = "" }, true},
		{"no label", func(c *Config) { c.TokenLabel = "" }, true},
		{"label too long", func(c *Config) { c.TokenLabel = strings.Repeat("x", 33) }, true},
		{"no pin", func(c *Config) { c.PIN = "" }, true},
		{"negative sessions", func(c *Config) { c.Sessions = -1 }, true},
		{"too many sessions", func(c *Config) { c.Sessions = maxSessions + 1 }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mutate(&cfg)
			err := cfg.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %t", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, shared.ErrConfigValidation) {
				t.Fatalf("Validate() = %v, does not wrap ErrConfigValidation", err)
			}
		})
	}
}

func TestHSMConfigRedactsPIN(t *testing.T) {
	cfg := Config{ModulePath: "/m.so", TokenLabel: "tok", PIN: "s3cret-pin"}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "hsm", cfg)
	for name, out := range map[string]string{
		"%v":   fmt.Sprintf("%v", cfg),
		"%+v":  fmt.Sprintf("%+v", cfg),
		"slog": buf.String(),
	} {
		if strings.Contains(out, cfg.PIN) {
			t.Errorf("%s output contains the PIN: %s", name, out)
		}
		if !strings.Contains(out, "tok") {
			t.Errorf("%s output lacks the token label: %s", name, out)
		}
	}
}
