package registry

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

func TestModify(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	tenants, err := OpenTenants(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	if err := tenants.Create(ctx, &Tenant{ID: "t1", Status: TenantEnabled}); err != nil {
		t.Fatal(err)
	}

	t.Run("concurrent writers all land", func(t *testing.T) {
		// Each writer appends its own method; with compare-and-set and
		// retries none is lost, whatever the interleaving.
		const writers = 4
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := tenants.Modify(ctx, "t1", func(tn *Tenant) error {
					tn.AuthMethods = append(tn.AuthMethods, string(rune('a'+i)))
					return nil
				})
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		lost := 0
		for err := range errs {
			if errors.Is(err, ErrConflict) {
				lost++ // allowed only when a writer lost ModifyAttempts races
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		got, _, err := tenants.Get(ctx, "t1")
		if err != nil || len(got.AuthMethods) != writers-lost {
			t.Fatalf("after %d writers (%d gave up): %+v %v", writers, lost, got, err)
		}
	})

	t.Run("callback error writes nothing", func(t *testing.T) {
		_, rev, _ := tenants.Get(ctx, "t1")
		refuse := errors.New("no")
		if _, err := tenants.Modify(ctx, "t1", func(tn *Tenant) error { tn.Status = TenantDisabled; return refuse }); !errors.Is(err, refuse) {
			t.Fatalf("got %v", err)
		}
		got, rev2, _ := tenants.Get(ctx, "t1")
		if rev2 != rev || got.Status != TenantEnabled {
			t.Fatalf("written despite the refusal: rev %d->%d %+v", rev, rev2, got)
		}
	})

	t.Run("missing entry", func(t *testing.T) {
		if _, err := tenants.Modify(ctx, "nobody", func(*Tenant) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("always losing gives ErrConflict", func(t *testing.T) {
		calls := 0
		_, err := tenants.Modify(ctx, "t1", func(tn *Tenant) error {
			calls++
			// A rival write between our read and our write.
			_, err := tenants.Modify(ctx, "t1", func(x *Tenant) error { x.EKTName += "x"; return nil })
			return err
		})
		if !errors.Is(err, ErrConflict) || calls != ModifyAttempts {
			t.Fatalf("got %v after %d calls", err, calls)
		}
	})
}

func TestMintAndRetireCredentials(t *testing.T) {
	ctx := context.Background()
	var gotAAD []byte
	seal := func(_ context.Context, pool string, data, aad []byte) ([]byte, error) {
		if pool != "p1" {
			t.Errorf("pool %q", pool)
		}
		gotAAD = aad
		return append([]byte("sealed:"), data...), nil
	}
	ks := &Keystore{Prefix: "a/b", Pool: "p1"}
	var secrets []string
	for range 3 {
		c, secret, err := MintCredential(ctx, seal, ks.Prefix, ks.Pool, time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.AccessKeyID) != 20 || strings.Trim(c.AccessKeyID, akidAlphabet) != "" || len(secret) != 44 {
			t.Fatalf("shape: %q %d", c.AccessKeyID, len(secret))
		}
		if string(c.SealedSecret) != "sealed:"+secret || string(gotAAD) != string(SealAAD("a/b", c.AccessKeyID)) {
			t.Fatalf("sealed %q aad %q", c.SealedSecret, gotAAD)
		}
		secrets = append(secrets, secret)
		err = ks.AddCredential(c, false)
		switch full := len(secrets) > MaxCredentials; {
		case full && !errors.Is(err, ErrCredentialsFull):
			t.Fatalf("third credential without force: %v", err)
		case full:
			// An attacker-free operator mistake: a second rotation must not
			// silently retire the credential KMS may still use.
			if len(ks.Credentials) != MaxCredentials || string(ks.Credentials[0].SealedSecret) != "sealed:"+secrets[0] {
				t.Fatalf("refused rotation changed the credentials")
			}
			if err := ks.AddCredential(c, true); err != nil {
				t.Fatal(err)
			}
			if ks.Credentials[0].AccessKeyID == "" || string(ks.Credentials[0].SealedSecret) == "sealed:"+secrets[0] {
				t.Fatalf("forced rotation kept the oldest credential")
			}
		case err != nil:
			t.Fatal(err)
		}
	}
	if len(ks.Credentials) != MaxCredentials || secrets[0] == secrets[1] {
		t.Fatalf("credentials: %d", len(ks.Credentials))
	}
	if err := ks.RetireCredential("NOPE"); !errors.Is(err, ErrNoCredential) {
		t.Fatalf("unknown: %v", err)
	}
	if err := ks.RetireCredential(ks.Credentials[0].AccessKeyID); err != nil {
		t.Fatal(err)
	}
	if err := ks.RetireCredential(ks.Credentials[0].AccessKeyID); !errors.Is(err, ErrLastCredential) || len(ks.Credentials) != 1 {
		t.Fatalf("last: %v", err)
	}
	failing := func(context.Context, string, []byte, []byte) ([]byte, error) { return nil, errors.New("hsm down") }
	if _, _, err := MintCredential(ctx, failing, "a/b", "p1", time.Now()); err == nil {
		t.Fatal("minted without sealing")
	}
}
