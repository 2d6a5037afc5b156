package killswitch_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

type fixture struct {
	kv      jetstream.KeyValue
	roster  *roster.Roster
	w       *killswitch.Watcher
	signers map[string]*roster.Signer
}

func setup(t *testing.T) (context.Context, *fixture) {
	t.Helper()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{"default"}); err != nil {
		t.Fatal(err)
	}
	r, err := roster.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RecordLegacyReleases(ctx, 0); err != nil {
		t.Fatal(err)
	}
	f := &fixture{roster: r, signers: map[string]*roster.Signer{}}
	for name, roles := range map[string][]natsauth.Role{
		"sam": {natsauth.RoleSecurity}, "sue": {natsauth.RoleSecurity, natsauth.RoleAdmin}, "ada": {natsauth.RoleAdmin},
	} {
		kp, _ := nkeys.CreateUser()
		pub, _ := kp.PublicKey()
		if err := r.Put(ctx, roster.Person{Name: name, PublicKey: pub, Roles: roles, Added: time.Now()}); err != nil {
			t.Fatal(err)
		}
		f.signers[name] = roster.NewSigner(name, kp, nil)
	}
	if f.kv, err = killswitch.Open(ctx, js, mesh.DefaultTopology()); err != nil {
		t.Fatal(err)
	}
	if f.w, err = killswitch.Watch(ctx, js, mesh.DefaultTopology(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return ctx, f
}

func (f *fixture) releaser(name string) *killswitch.Releaser {
	return &killswitch.Releaser{KV: f.kv, Roster: f.roster, Signer: f.signers[name], Now: time.Now}
}

func (f *fixture) engage(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	if err := killswitch.Set(ctx, f.kv, killswitch.ScopeKeystore, name, killswitch.Switch{Engaged: true, Reason: "test", By: "sam"}); err != nil {
		t.Fatal(err)
	}
}

// state waits until the watcher's decision on keystore name is want.
func (f *fixture) state(t *testing.T, name string, want bool) string {
	t.Helper()
	var why string
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var engaged bool
		engaged, why = f.w.Engaged(killswitch.ScopeKeystore, name)
		if engaged != want {
			return &mismatch{engaged, why}
		}
		return nil
	})
	return why
}

type mismatch struct {
	engaged bool
	why     string
}

func (m *mismatch) Error() string {
	if m.engaged {
		return "still engaged: " + m.why
	}
	return "not engaged"
}

// stays checks the decision stays engaged for a while (a forged release
// must never be honoured, even late).
func (f *fixture) stays(t *testing.T, name string) string {
	t.Helper()
	f.state(t, name, true)
	time.Sleep(300 * time.Millisecond)
	engaged, why := f.w.Engaged(killswitch.ScopeKeystore, name)
	if !engaged {
		t.Fatalf("switch %s released without a valid release", name)
	}
	return why
}

func TestReleaseNeedsQuorum(t *testing.T) {
	ctx, f := setup(t)
	key := killswitch.Key(killswitch.ScopeKeystore, "ks1")
	f.engage(ctx, t, "ks1")
	f.state(t, "ks1", true)

	res, err := f.releaser("sam").Release(ctx, key, "fixed")
	if err != nil || res.Released || res.Pending == nil || res.Pending.Need != 2 {
		t.Fatalf("first release: %+v %v", res, err)
	}
	f.stays(t, "ks1")
	if _, err := f.releaser("sam").Release(ctx, key, "again"); err == nil || !strings.Contains(err.Error(), "already approved") {
		t.Fatalf("second signature by the same person: %v", err)
	}
	list, err := killswitch.Pendings(ctx, f.kv)
	if err != nil || len(list) != 1 || list[0].ID != res.Pending.ID {
		t.Fatalf("pending: %+v %v", list, err)
	}
	res, err = f.releaser("sue").Release(ctx, key, "")
	if err != nil || !res.Released {
		t.Fatalf("second person: %+v %v", res, err)
	}
	f.state(t, "ks1", false)
	if res, err := f.releaser("sam").Release(ctx, key, ""); err != nil || !res.WasReleased {
		t.Fatalf("release of a released switch: %+v %v", res, err)
	}
}

// An insider with a security credential writes the bucket directly: none
// of these releases is honoured.
func TestForgedReleasesRefused(t *testing.T) {
	ctx, f := setup(t)
	key := killswitch.Key(killswitch.ScopeKeystore, "ks2")
	put := func(sw killswitch.Switch) {
		t.Helper()
		b, _ := json.Marshal(sw)
		if _, err := f.kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	f.engage(ctx, t, "ks2")
	e, _ := f.kv.Get(ctx, key)
	first := e.Revision()
	sign := func(name string, rev uint64) roster.Signature {
		s, err := f.signers[name].Sign(killswitch.OpRelease, killswitch.ReleaseBody(key, rev))
		if err != nil {
			t.Fatal(err)
		}
		return *s
	}

	t.Run("plain release value", func(t *testing.T) {
		put(killswitch.Switch{Engaged: false, By: "sam"})
		if why := f.stays(t, "ks2"); !strings.Contains(why, "no approvals") {
			t.Fatalf("why: %s", why)
		}
	})
	t.Run("one signature", func(t *testing.T) {
		put(killswitch.Switch{Releases: first, Approvals: []roster.Signature{sign("sam", first)}})
		f.stays(t, "ks2")
	})
	t.Run("same person twice", func(t *testing.T) {
		put(killswitch.Switch{Releases: first, Approvals: []roster.Signature{sign("sam", first), sign("sam", first)}})
		f.stays(t, "ks2")
	})
	t.Run("signer without the security role", func(t *testing.T) {
		put(killswitch.Switch{Releases: first, Approvals: []roster.Signature{sign("sam", first), sign("ada", first)}})
		if why := f.stays(t, "ks2"); !strings.Contains(why, "security") {
			t.Fatalf("why: %s", why)
		}
	})
	t.Run("approvals kept from an earlier engagement", func(t *testing.T) {
		old := []roster.Signature{sign("sam", first), sign("sue", first)}
		f.engage(ctx, t, "ks2") // engaged again: a later revision
		put(killswitch.Switch{Releases: first, Approvals: old})
		if why := f.stays(t, "ks2"); !strings.Contains(why, "engaged again") {
			t.Fatalf("why: %s", why)
		}
	})
	t.Run("tampered signature", func(t *testing.T) {
		e, _ := f.kv.Get(ctx, key)
		s := sign("sue", e.Revision())
		s.Sig = s.Sig[:len(s.Sig)-4] + "AAAA"
		put(killswitch.Switch{Releases: e.Revision(), Approvals: []roster.Signature{sign("sam", e.Revision()), s}})
		f.stays(t, "ks2")
	})
	t.Run("delete of the switch", func(t *testing.T) {
		if err := f.kv.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		if why := f.stays(t, "ks2"); !strings.Contains(why, "deleted") {
			t.Fatalf("why: %s", why)
		}
	})
	t.Run("a real release still works after all that", func(t *testing.T) {
		if _, err := f.releaser("sue").Release(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
		if res, err := f.releaser("sam").Release(ctx, key, ""); err != nil || !res.Released {
			t.Fatalf("%+v %v", res, err)
		}
		f.state(t, "ks2", false)
	})
}

// A signer removed from the roster later keeps their release valid: the
// roster is read as it was when the release was written.
func TestReleaseOutlivesSignerRemoval(t *testing.T) {
	ctx, f := setup(t)
	key := killswitch.Key(killswitch.ScopeKeystore, "ks3")
	f.engage(ctx, t, "ks3")
	if _, err := f.releaser("sam").Release(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.releaser("sue").Release(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	f.state(t, "ks3", false)
	time.Sleep(10 * time.Millisecond)
	if err := f.roster.Remove(ctx, "sam"); err != nil {
		t.Fatal(err)
	}
	e, _ := f.kv.Get(ctx, key)
	var sw killswitch.Switch
	_ = json.Unmarshal(e.Value(), &sw)
	if err := (&killswitch.Proof{KV: f.kv, Roster: f.roster}).Check(ctx, e, sw); err != nil {
		t.Fatalf("release after its signer left: %v", err)
	}
	// But sam, removed, cannot sign a new one.
	f.engage(ctx, t, "ks3")
	e, _ = f.kv.Get(ctx, key)
	s1, _ := f.signers["sam"].Sign(killswitch.OpRelease, killswitch.ReleaseBody(key, e.Revision()))
	s2, _ := f.signers["sue"].Sign(killswitch.OpRelease, killswitch.ReleaseBody(key, e.Revision()))
	b, _ := json.Marshal(killswitch.Switch{Releases: e.Revision(), Approvals: []roster.Signature{*s1, *s2}})
	if _, err := f.kv.Put(ctx, key, b); err != nil {
		t.Fatal(err)
	}
	if why := f.stays(t, "ks3"); !strings.Contains(why, "not on the roster") {
		t.Fatalf("why: %s", why)
	}
}

// Releases written before releases were signed (up to the revision
// bootstrap recorded at the upgrade) stay releases; later ones do not.
func TestLegacyReleases(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{"default"}); err != nil {
		t.Fatal(err)
	}
	kv, err := killswitch.Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	// Written by the previous build: engaged, then released by one person.
	for _, sw := range []killswitch.Switch{{Engaged: true, Reason: "old"}, {Engaged: false, By: "operator"}} {
		if err := killswitch.Set(ctx, kv, killswitch.ScopeTenant, "t-old", sw); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := roster.Open(ctx, js)
	info, _ := js.Stream(ctx, "KV_sovkeys_killswitch")
	if wrote, err := r.RecordLegacyReleases(ctx, info.CachedInfo().State.LastSeq); err != nil || !wrote {
		t.Fatalf("record: %v %v", wrote, err)
	}
	if wrote, _ := r.RecordLegacyReleases(ctx, 1<<40); wrote {
		t.Fatal("the migration mark moved")
	}
	w, err := killswitch.Watch(ctx, js, mesh.DefaultTopology(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if engaged, why := w.Engaged(killswitch.ScopeTenant, "t-old"); engaged {
			return &mismatch{engaged, why}
		}
		return nil
	})
	// A single-person release after the upgrade is not honoured.
	for _, sw := range []killswitch.Switch{{Engaged: true, Reason: "new"}, {Engaged: false, By: "operator"}} {
		if err := killswitch.Set(ctx, kv, killswitch.ScopeTenant, "t-old", sw); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if engaged, _ := w.Engaged(killswitch.ScopeTenant, "t-old"); !engaged {
		t.Fatal("an unsigned release after the upgrade was honoured")
	}
}
