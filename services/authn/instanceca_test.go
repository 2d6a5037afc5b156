package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func selfSigned(t *testing.T, cn string) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// An attacker who can write the PKI bucket replaces a pool's instance CA
// with their own (to mint instance certificates for any tenant): authn
// refuses the pool, logs it and audits it, and a restarted authn, replaying
// the key's history, refuses it too.
func TestChangedInstanceCAIsRefused(t *testing.T) {
	t.Parallel()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo := mesh.DefaultTopology()
	if err := mesh.Bootstrap(ctx, js, topo, []string{"p1"}); err != nil {
		t.Fatal(err)
	}
	pki, err := mesh.EnsureBucket(ctx, js, shared.BucketPKI, "", topo)
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{js: js, log: slog.New(slog.DiscardHandler), now: time.Now}
	cas, err := watchCAs(ctx, pki, s)
	if err != nil {
		t.Fatal(err)
	}
	genuine, forged := selfSigned(t, "genuine"), selfSigned(t, "forged")
	if _, err := pki.Create(ctx, shared.PKIInstanceCA("p1"), genuine); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if cas.get("p1") == nil {
			return errNotYet
		}
		return nil
	})
	if _, err := pki.Put(ctx, shared.PKIInstanceCA("p1"), forged); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !cas.isRefused("p1") {
			return errNotYet
		}
		return nil
	})
	if cas.get("p1") != nil {
		t.Fatal("a pool with a changed CA still has a CA")
	}
	// Audited under authn's own subject.
	st, err := js.Stream(ctx, shared.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	// The audit event is published right after the pool is refused.
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, err := st.GetLastMsgForSubject(ctx, shared.AuditSubjectPrefix(shared.AuditServiceAuthn)+">"); err != nil {
			return fmt.Errorf("the refused change was not audited: %w", err)
		}
		return nil
	})
	// Putting the genuine one back does not un-refuse the pool.
	if _, err := pki.Put(ctx, shared.PKIInstanceCA("p1"), genuine); err != nil {
		t.Fatal(err)
	}
	// A restarted authn replays the history and refuses it as well.
	again, err := watchCAs(ctx, pki, s)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !again.isRefused("p1") {
			return errNotYet
		}
		return nil
	})
	// An unchanged re-publication is fine.
	if _, err := pki.Create(ctx, shared.PKIInstanceCA("p2"), genuine); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Put(ctx, shared.PKIInstanceCA("p2"), genuine); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if cas.get("p2") == nil {
			return errNotYet
		}
		return nil
	})
	if cas.isRefused("p2") {
		t.Fatal("an unchanged CA was refused")
	}
}

var errNotYet = errors.New("not yet")
