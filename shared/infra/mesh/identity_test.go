package mesh

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// writeCreds writes a .creds file for user name, expiring at exp (0: never).
func writeCreds(t *testing.T, name string, exp int64) string {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name, uc.Expires = name, exp
	tok, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	b, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// CredsExpiry reads the user JWT's expiry (alert CredentialExpiresSoon);
// zero when it never expires; an unreadable file is an error.
func TestCredsExpiry(t *testing.T) {
	at := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name string
		exp  int64
		want time.Time
	}{
		{"gateway-1", at.Unix(), at},
		{"authn", 0, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CredsExpiry(writeCreds(t, tc.name, tc.exp))
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("CredsExpiry = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := CredsExpiry(filepath.Join(t.TempDir(), "missing.creds")); err == nil {
		t.Fatal("a missing creds file gave no error")
	}
}
