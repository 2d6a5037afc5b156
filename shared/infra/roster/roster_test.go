package roster_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

type fixture struct {
	v      *roster.Verifier
	reqs   roster.Requests
	now    time.Time
	people map[string]*roster.Signer
}

func setup(t *testing.T) (context.Context, *fixture) {
	t.Helper()
	_, _, js := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{"default"}); err != nil {
		t.Fatal(err)
	}
	r, err := roster.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := js.KeyValue(ctx, shared.BucketAdmin)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{now: time.Now(), people: map[string]*roster.Signer{}, reqs: roster.Requests{KV: admin}}
	f.v = &roster.Verifier{Roster: r, Admin: admin, Now: func() time.Time { return f.now }}
	for name, roles := range map[string][]natsauth.Role{
		"alice": {natsauth.RoleAdmin}, "bob": {natsauth.RoleAdmin, natsauth.RoleSecurity}, "audrey": {natsauth.RoleAuditor},
	} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		if err := r.Put(ctx, roster.Person{Name: name, PublicKey: pub, Roles: roles, Added: f.now}); err != nil {
			t.Fatal(err)
		}
		f.people[name] = roster.NewSigner(name, kp, func() time.Time { return f.now })
	}
	return ctx, f
}

func (f *fixture) sign(t *testing.T, who, op string, body []byte) *roster.Signature {
	t.Helper()
	sig, err := f.people[who].Sign(op, body)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func wantRefused(t *testing.T, what string, err error, contains string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), contains) {
		t.Fatalf("%s: %v, want an error saying %q", what, err, contains)
	}
}

func TestVerify(t *testing.T) {
	ctx, f := setup(t)
	body := []byte(`{"label":"k","action":"rotate"}`)
	op := kwadmin.VersionOp(kwadmin.VersionRotate)
	sig := f.sign(t, "alice", op, body)
	if p, err := f.v.Verify(ctx, op, body, sig, natsauth.RoleAdmin); err != nil || p.Name != "alice" {
		t.Fatalf("good signature: %v", err)
	}
	if err := f.v.Consume(ctx, sig); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, "replay", f.v.Consume(ctx, sig), "replayed")
	_, err := f.v.Verify(ctx, op, body, f.sign(t, "audrey", op, body), natsauth.RoleAdmin)
	wantRefused(t, "outside the role", err, "needs the admin role")
	_, err = f.v.Verify(ctx, op, []byte(`{"label":"other"}`), sig, natsauth.RoleAdmin)
	wantRefused(t, "other parameters", err, "does not cover")
	_, err = f.v.Verify(ctx, kwadmin.OpVersionDestroy, body, sig, natsauth.RoleAdmin)
	wantRefused(t, "other operation", err, "is for")
	stale := f.sign(t, "alice", op, body)
	f.now = f.now.Add(roster.MaxSkew + time.Second)
	_, err = f.v.Verify(ctx, op, body, stale, natsauth.RoleAdmin)
	wantRefused(t, "stale", err, "stale")
	f.now = f.now.Add(-roster.MaxSkew - time.Second)
	// A signature whose bytes were altered, and one by an unknown key.
	forged := *f.sign(t, "alice", op, body)
	forged.Person = "bob"
	_, err = f.v.Verify(ctx, op, body, &forged, natsauth.RoleAdmin)
	wantRefused(t, "renamed signer", err, "does not verify")
	kp, _ := nkeys.CreateUser()
	strange, _ := roster.NewSigner("alice", kp, nil).Sign(op, body)
	_, err = f.v.Verify(ctx, op, body, strange, natsauth.RoleAdmin)
	wantRefused(t, "unknown key", err, "not alice's")
	// Malformed headers.
	for _, h := range []string{"", "{", `{"op":1}`, `{"op":"x","extra":true}`, strings.Repeat("x", 5000)} {
		if _, err := roster.ParseSignature(h); err == nil {
			t.Errorf("ParseSignature(%.20q) accepted", h)
		}
	}
}

func TestQuorumDecisions(t *testing.T) {
	ctx, f := setup(t)
	body := []byte(`{"label":"k","action":"destroy","version":1,"confirm":"c"}`)
	op := kwadmin.OpVersionDestroy
	req := f.sign(t, "alice", op, body)
	p := &roster.Pending{ID: roster.NewID(), Op: op, Pool: "default", Body: json.RawMessage(body), Role: natsauth.RoleAdmin, Need: 2,
		Request: *req, Created: f.now, Expires: f.now.Add(time.Hour), State: roster.StatePending}
	if err := f.reqs.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := f.v.Recheck(ctx, p); err == nil {
		t.Fatal("one signature passed a quorum of two")
	}
	decide := func(who, op string) ([]byte, *roster.Signature) {
		b, err := roster.DecisionBody(p, "")
		if err != nil {
			t.Fatal(err)
		}
		return b, f.sign(t, who, op, b)
	}
	b, s := decide("alice", kwadmin.OpApprove)
	_, err := f.v.CheckDecision(ctx, p, kwadmin.OpApprove, b, s)
	wantRefused(t, "own approval", err, "cannot approve")
	b, s = decide("audrey", kwadmin.OpApprove)
	_, err = f.v.CheckDecision(ctx, p, kwadmin.OpApprove, b, s)
	wantRefused(t, "approval without the role", err, "needs the admin role")
	// An approval of other parameters than the request holds.
	other, _ := json.Marshal(kwadmin.DecideRequest{ID: p.ID, Digest: roster.Digest([]byte("{}"))})
	_, err = f.v.CheckDecision(ctx, p, kwadmin.OpApprove, other, f.sign(t, "bob", kwadmin.OpApprove, other))
	wantRefused(t, "approval of other parameters", err, "not what was approved")
	// Expired: nobody decides it any more.
	f.now = f.now.Add(2 * time.Hour)
	b, s = decide("bob", kwadmin.OpApprove)
	_, err = f.v.CheckDecision(ctx, p, kwadmin.OpApprove, b, s)
	wantRefused(t, "expired request", err, "expired")
	f.now = f.now.Add(-2 * time.Hour)
	// Bob approves: the quorum is met and every signature rechecks.
	b, s = decide("bob", kwadmin.OpApprove)
	if _, err := f.v.CheckDecision(ctx, p, kwadmin.OpApprove, b, s); err != nil {
		t.Fatal(err)
	}
	p.Approvals = append(p.Approvals, roster.Decision{Sig: *s, Body: b})
	if !p.Complete() {
		t.Fatal("two signers do not complete a quorum of two")
	}
	if err := f.v.Recheck(ctx, p); err != nil {
		t.Fatalf("recheck: %v", err)
	}
	_, err = f.v.CheckDecision(ctx, p, kwadmin.OpApprove, b, f.sign(t, "bob", kwadmin.OpApprove, b))
	wantRefused(t, "second approval by the same person", err, "already approved")
	// An approval copied from the requester's own signature counts once.
	dup := *p
	dup.Approvals = []roster.Decision{{Sig: p.Request, Body: b}}
	if err := f.v.Recheck(ctx, &dup); err == nil {
		t.Fatal("a copied signature passed the recheck")
	}
	// Bob removed from the roster before the request is applied: refused.
	if err := f.v.Roster.Remove(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, "approver removed", f.v.Recheck(ctx, p), "not on the roster")
	// The requester may withdraw their request.
	b, s = decide("alice", kwadmin.OpReject)
	if _, err := f.v.CheckDecision(ctx, p, kwadmin.OpReject, b, s); err != nil {
		t.Fatalf("withdrawal: %v", err)
	}
	// Stored requests read back; a malformed id is refused.
	if _, _, err := f.reqs.Get(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.reqs.Get(ctx, "a.b>"); err == nil {
		t.Fatal("malformed request id accepted")
	}
}

func TestPolicy(t *testing.T) {
	ctx, f := setup(t)
	pol, err := f.v.Roster.Policy(ctx)
	if err != nil || pol.Need(kwadmin.OpVersionDestroy) != roster.DefaultQuorum || pol.Need("xks.key.create") != 1 {
		t.Fatalf("default policy: %+v %v", pol, err)
	}
	if err := f.v.Roster.SetPolicy(ctx, roster.Policy{Quorum: map[string]int{kwadmin.OpVersionDestroy: 0}}); err == nil {
		t.Fatal("a quorum of 0 was accepted")
	}
	if err := f.v.Roster.SetPolicy(ctx, roster.UniformPolicy(3)); err != nil {
		t.Fatal(err)
	}
	if pol, _ := f.v.Roster.Policy(ctx); pol.Need(kwadmin.OpVersionDestroy) != 3 {
		t.Fatalf("policy %+v", pol)
	}
}
