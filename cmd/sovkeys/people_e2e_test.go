package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/killswitch"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// TestPeopleAndQuorum plays the issue "Operators are people" on a node
// that needs two people for a key version destroy: personal credentials
// added with `operator add`, a destroy that waits for a second admin, the
// requester and an auditor refused as approvers, a replayed, stale or
// forged signature refused by the keyworker, and the operator log naming
// each person.
func TestPeopleAndQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a second standalone node")
	}
	dir := t.TempDir()
	n, err := startNode(dir, nil, "--quorum", "2", "--key-deletion-min-wait", "1s", "--key-deletion-sweep", "500ms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.shutdown() })
	admin := n.creds
	if fi, err := os.Stat(admin); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("first admin's credential: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, clusterinit.LegacyOperatorCreds)); err == nil {
		t.Fatal("a shared operator credential was written")
	}
	n.cli(t, nil, "operator", "add", "--dir", dir, "--name", "bob", "--roles", "admin")
	n.cli(t, nil, "operator", "add", "--dir", dir, "--name", "audrey", "--roles", "auditor")
	bob, audrey := clusterinit.PersonCredsFile(dir, "bob"), clusterinit.PersonCredsFile(dir, "audrey")
	var people struct {
		People []struct{ Name, Roles string }
		Quorum map[string]int
	}
	n.cli(t, &people, "operator", "list")
	if len(people.People) != 3 || people.Quorum[kwadmin.OpVersionDestroy] != 2 {
		t.Fatalf("roster: %+v", people)
	}
	// Bad input changes nothing.
	if err := n.cliErr(nil, "operator", "add", "--dir", dir, "--name", "Eve!", "--roles", "admin"); err == nil {
		t.Fatal("a malformed name was added")
	}
	if err := n.cliErr(nil, "operator", "add", "--dir", dir, "--name", "eve", "--roles", "root"); err == nil {
		t.Fatal("an unknown role was accepted")
	}

	c, _ := n.newKeystore(t, "/people")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/people", "--id", "pk")
	waitUsable(t, c)
	key := []string{"--keystore", "/people", "--id", "pk"}
	n.cli(t, nil, append([]string{"xks", "key", "rotate"}, key...)...)
	n.cli(t, nil, append([]string{"xks", "key", "version", "disable", "--version", "1"}, key...)...)
	// An auditor changes nothing.
	if err := n.cliAs(audrey, nil, append([]string{"xks", "key", "rotate"}, key...)...); err == nil {
		t.Fatal("an auditor rotated a key")
	}
	var out xksKeyVersionsOut
	n.cli(t, &out, append([]string{"xks", "key", "version", "destroy", "--version", "1"}, key...)...)
	if out.Confirm == "" {
		t.Fatalf("destroy step one: %+v", out)
	}
	var pending xksKeyVersionsOut
	n.cli(t, &pending, append([]string{"xks", "key", "version", "destroy", "--version", "1", "--confirm", out.Confirm}, key...)...)
	if pending.Pending == "" || pending.Need != 2 || len(pending.Versions) != 0 && pending.Destroyed {
		t.Fatalf("destroy waits for approval: %+v", pending)
	}
	versions := func() int {
		var v xksKeyVersionsOut
		n.cli(t, &v, append([]string{"xks", "key", "version", "list"}, key...)...)
		return len(v.Versions)
	}
	if versions() != 2 {
		t.Fatal("the version was destroyed before its approval")
	}
	// The requester cannot approve their own request; an auditor cannot
	// approve at all; a malformed id is refused.
	if err := n.cliAs(admin, nil, "approve", pending.Pending); err == nil || !strings.Contains(err.Error(), "cannot approve") {
		t.Fatalf("own approval: %v", err)
	}
	if err := n.cliAs(audrey, nil, "approve", pending.Pending); err == nil || !strings.Contains(err.Error(), "admin role") {
		t.Fatalf("auditor approval: %v", err)
	}
	if err := n.cliAs(bob, nil, "approve", "no.such>id"); err == nil {
		t.Fatal("a malformed request id was accepted")
	}
	var decided kwadmin.DecideResponse
	if err := n.cliAs(bob, &decided, "approve", pending.Pending); err != nil {
		t.Fatal(err)
	}
	if decided.State != roster.StateApplied || versions() != 1 {
		t.Fatalf("approved destroy: %+v, %d versions", decided, versions())
	}
	if err := n.cliAs(bob, nil, "approve", pending.Pending); err == nil {
		t.Fatal("a decided request was approved again")
	}
	// The operator log names the requester, the approver and both on the
	// destroy itself, whose intent is recorded before the HSM changed.
	phases := operatorPhases(t, n, pending.Pending)
	for _, want := range []string{"requested by admin", "approved by bob", "intent by admin approved_by=bob", "result by admin approved_by=bob"} {
		if !phases[want] {
			t.Errorf("operator log lacks %q (has %v)", want, phases)
		}
	}

	// A forced credential rotation (security) waits for a second person of
	// the security role: an admin's approval does not count.
	n.cli(t, nil, "operator", "add", "--dir", dir, "--name", "sam", "--roles", "security")
	sam := clusterinit.PersonCredsFile(dir, "sam")
	if err := n.cliAs(audrey, nil, "tenant", "create", "--id", "vpc-audrey"); err == nil {
		t.Fatal("an auditor created a tenant")
	}
	// A kill switch: one person engages it; its release waits for a second
	// person of the security role, and the services keep it engaged until
	// then.
	n.cli(t, nil, "killswitch", "engage", "--keystore", "/people", "--reason", "people test")
	stopped := func() error {
		if _, err := c.Encrypt(context.Background(), "pk", []byte("p"), nil, false); xksErrName(err) != "InvalidStateException" {
			return fmt.Errorf("encrypt under the kill switch: %v", err)
		}
		return nil
	}
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, stopped)
	var stderr strings.Builder
	if code := run(context.Background(), []string{"killswitch", "release", "--keystore", "/people"}, n.getenv, &strings.Builder{}, &stderr); code != exitPending {
		t.Fatalf("release by one person: exit %d, want %d: %s", code, exitPending, stderr.String())
	}
	_, rest, _ := strings.Cut(stderr.String(), "request ")
	release := strings.Fields(rest)[0]
	time.Sleep(500 * time.Millisecond)
	if err := stopped(); err != nil {
		t.Fatalf("released by one person: %v", err)
	}
	if err := n.cliAs(admin, nil, "approve", release); err == nil || !strings.Contains(err.Error(), "already approved") {
		t.Fatalf("own approval of a release: %v", err)
	}
	if err := n.cliAs(bob, nil, "approve", release); err == nil || !strings.Contains(err.Error(), "security role") {
		t.Fatalf("an admin approved a release: %v", err)
	}
	if err := n.cliAs(sam, nil, "approve", release); err != nil {
		t.Fatalf("security approval of the release: %v", err)
	}
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := c.Encrypt(context.Background(), "pk", []byte("p"), nil, false)
		return err
	})
	var ks map[string]struct {
		Engaged      bool   `json:"engaged"`
		ReleaseCheck string `json:"release_check"`
		Approvals    []any  `json:"approvals"`
	}
	n.cli(t, &ks, "killswitch", "status")
	if s := ks[killswitch.Key(killswitch.ScopeKeystore, "people")]; s.Engaged || s.ReleaseCheck != "ok" || len(s.Approvals) != 2 {
		t.Fatalf("kill switch status after the release: %+v", ks)
	}

	n.cli(t, nil, "xks", "keystore", "rotate-credential", "--prefix", "/people")
	stderr.Reset()
	code := run(context.Background(), []string{"xks", "keystore", "rotate-credential", "--prefix", "/people", "--force"}, n.getenv, &strings.Builder{}, &stderr)
	if code != exitPending {
		t.Fatalf("forced rotation: exit %d, want %d (pending): %s", code, exitPending, stderr.String())
	}
	var list strings.Builder
	if code := run(context.Background(), []string{"request", "list"}, n.getenv, &list, &strings.Builder{}); code != 0 {
		t.Fatalf("request list: %d", code)
	}
	var forced string
	for _, line := range strings.Split(list.String(), "\n") {
		if strings.Contains(line, "rotate_credential") && strings.Contains(line, "pending") {
			forced = strings.Fields(line)[0]
		}
	}
	if forced == "" {
		t.Fatalf("no pending forced rotation in:\n%s", list.String())
	}
	if err := n.cliAs(bob, nil, "approve", forced); err == nil || !strings.Contains(err.Error(), "security role") {
		t.Fatalf("an admin approved a forced rotation: %v", err)
	}
	if err := n.cliAs(sam, &decided, "approve", forced); err != nil || decided.State != roster.StateApplied {
		t.Fatalf("security approval: %+v %v", decided, err)
	}

	// Tenant and key store deletion wait for a second admin; a key store
	// with keys is never deleted.
	n.cli(t, nil, "tenant", "create", "--id", "vpc-gone")
	pendingID := func(args ...string) string {
		t.Helper()
		var stderr strings.Builder
		if code := run(context.Background(), args, n.getenv, &strings.Builder{}, &stderr); code != exitPending {
			t.Fatalf("%v: exit %d, want %d: %s", args, code, exitPending, stderr.String())
		}
		_, rest, _ := strings.Cut(stderr.String(), "request ")
		return strings.Fields(rest)[0]
	}
	del := pendingID("tenant", "delete", "--id", "vpc-gone")
	if err := n.cliErr(nil, "tenant", "show", "--id", "vpc-gone"); err != nil {
		t.Fatalf("the tenant went before its approval: %v", err)
	}
	if err := n.cliAs(bob, &decided, "approve", del); err != nil || decided.State != roster.StateApplied {
		t.Fatalf("tenant delete approval: %+v %v", decided, err)
	}
	if err := n.cliErr(nil, "tenant", "show", "--id", "vpc-gone"); err == nil {
		t.Fatal("the approved tenant deletion did not delete it")
	}
	ksDel := pendingID("xks", "keystore", "delete", "--prefix", "/people")
	if err := n.cliAs(bob, nil, "approve", ksDel); err == nil || !strings.Contains(err.Error(), "still has") {
		t.Fatalf("a key store with keys was deleted: %v", err)
	}

	// Key deletion: scheduled with a waiting period (two admins), the key
	// refused at once and DISABLED for KMS, cancellable, then destroyed in
	// the HSM and removed from the registry.
	dc, _ := n.newKeystore(t, "/deletion")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/deletion", "--id", "dk")
	testkit.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		_, err := dc.Encrypt(context.Background(), "dk", []byte("x"), nil, false)
		return err
	})
	dkLabel := labelOf(t, n, "/deletion", "dk")
	dk := []string{"--keystore", "/deletion", "--id", "dk"}
	if _, err := dc.Encrypt(context.Background(), "dk", []byte("x"), nil, false); err != nil {
		t.Fatalf("encrypt before deletion: %v", err)
	}
	if err := n.cliErr(nil, append([]string{"xks", "key", "schedule-deletion", "--waiting-period", "100ms"}, dk...)...); err == nil {
		t.Fatal("a deletion shorter than the minimum waiting period was accepted")
	}
	sched := pendingID(append([]string{"xks", "key", "schedule-deletion", "--waiting-period", "1h"}, dk...)...)
	if err := n.cliAs(bob, &decided, "approve", sched); err != nil || decided.State != roster.StateApplied {
		t.Fatalf("schedule deletion approval: %+v %v", decided, err)
	}
	testkit.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if _, err := dc.Encrypt(context.Background(), "dk", []byte("x"), nil, false); xksErrName(err) != "InvalidStateException" && xksErrName(err) != "KeyNotFoundException" {
			return fmt.Errorf("encrypt with a key pending deletion: %v", err)
		}
		return nil
	})
	if err := n.cliErr(nil, append([]string{"xks", "key", "enable"}, dk...)...); err == nil {
		t.Fatal("a key pending deletion was enabled without cancelling")
	}
	n.cli(t, nil, append([]string{"xks", "key", "cancel-deletion"}, dk...)...)
	sched = pendingID(append([]string{"xks", "key", "schedule-deletion", "--waiting-period", "2s"}, dk...)...)
	if err := n.cliAs(bob, &decided, "approve", sched); err != nil || decided.State != roster.StateApplied {
		t.Fatalf("schedule deletion approval: %+v %v", decided, err)
	}
	testkit.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		var keys []struct {
			ID string `json:"keyId"`
		}
		n.cli(t, &keys, "xks", "key", "list", "--keystore", "/deletion")
		for _, k := range keys {
			if k.ID == "dk" {
				return fmt.Errorf("key dk still registered")
			}
		}
		return nil
	})
	adminNC := connectAs(t, n, admin)
	if err := kwadmin.Call(kwadmin.WithSigner(context.Background(), signerOf(t, admin)), adminNC, "default", kwadmin.EndpointKeyInfo,
		kwadmin.KeyRequest{Label: dkLabel}, &kwadmin.KeyInfo{}); shared.CodeOf(err) != shared.CodeKeyNotFound {
		t.Fatalf("the destroyed key is still in the HSM: %v", err)
	}

	// Signed requests sent by hand: replay, stale time, a key that is not
	// the person's, no signature at all.
	nc := connectAs(t, n, admin)
	signer, err := roster.SignerFromCreds(admin)
	if err != nil {
		t.Fatal(err)
	}
	label := labelOf(t, n, "/people", "pk")
	body, _ := json.Marshal(kwadmin.KeyVersionRequest{Label: label, Action: kwadmin.VersionRotate, Keystore: "people", KeyID: "pk"})
	send := func(sig string) error {
		m := nats.NewMsg(shared.KeyworkerAdminSubject("default", shared.EndpointKeyVersion))
		m.Data = body
		if sig != "" {
			m.Header.Set(kwadmin.HeaderSignature, sig)
		}
		r, err := nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			return err
		}
		if msg := r.Header.Get("Nats-Service-Error"); msg != "" {
			return &shared.Error{Code: shared.Code(r.Header.Get("Nats-Service-Error-Code")), Message: msg}
		}
		return nil
	}
	sig, err := signer.SignRequest(kwadmin.VersionOp(kwadmin.VersionRotate), body)
	if err != nil {
		t.Fatal(err)
	}
	if err := send(sig); err != nil {
		t.Fatalf("signed rotate: %v", err)
	}
	for name, tc := range map[string]struct {
		sig  func() string
		want string
	}{
		"replayed": {func() string { return sig }, "replayed"},
		"unsigned": {func() string { return "" }, "not signed"},
		"stale": {func() string {
			kp, _ := nkeys.FromSeed(seedOf(t, admin))
			s, _ := roster.NewSigner("admin", kp, func() time.Time { return time.Now().Add(-10 * time.Minute) }).SignRequest(kwadmin.VersionOp(kwadmin.VersionRotate), body)
			return s
		}, "stale"},
		"forged key": {func() string {
			kp, _ := nkeys.CreateUser()
			s, _ := roster.NewSigner("admin", kp, nil).SignRequest(kwadmin.VersionOp(kwadmin.VersionRotate), body)
			return s
		}, "not admin's"},
		"other operation": {func() string {
			s, _ := signer.SignRequest(kwadmin.VersionOp(kwadmin.VersionDisable), body)
			return s
		}, "is for"},
		"unknown person": {func() string {
			kp, _ := nkeys.CreateUser()
			s, _ := roster.NewSigner("mallory", kp, nil).SignRequest(kwadmin.VersionOp(kwadmin.VersionRotate), body)
			return s
		}, "not on the roster"},
	} {
		if err := send(tc.sig()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// Removing a person needs two security people once the roster has
	// them (admin and sam): the holder of the trust seeds alone is refused
	// before any file changes; sam asks, admin approves, then it applies,
	// once.
	if err := n.cliErr(nil, "operator", "remove", "--dir", dir, "--name", "bob"); err == nil || !strings.Contains(err.Error(), "needs the approval of 2 security people") {
		t.Fatalf("remove without approval: %v", err)
	}
	if _, err := os.Stat(bob); err != nil {
		t.Fatalf("a refused removal changed the files: %v", err)
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"operator", "request", "remove", "--name", "bob"}, getenvAs(n, sam), &strings.Builder{}, &stderr); code != exitPending {
		t.Fatalf("operator request remove: exit %d: %s", code, stderr.String())
	}
	_, rest, _ = strings.Cut(stderr.String(), "request ")
	removal := strings.Fields(rest)[0]
	if err := n.cliAs(sam, nil, "approve", removal); err == nil {
		t.Fatal("the requester approved their own removal request")
	}
	if err := n.cliAs(admin, &decided, "approve", removal); err != nil || decided.State != roster.StateApplied {
		t.Fatalf("approve the removal: %+v %v", decided, err)
	}
	// A removed person's signatures are refused at once.
	n.cli(t, nil, "operator", "remove", "--dir", dir, "--name", "bob")
	if _, err := os.Stat(bob); err == nil {
		t.Fatal("a removed person's credential is still on disk")
	}
	var stdout strings.Builder
	if code := run(context.Background(), []string{"request", "list"}, n.getenv, &stdout, &strings.Builder{}); code != 0 || !strings.Contains(stdout.String(), pending.Pending) ||
		!strings.Contains(stdout.String(), "applied") || !strings.Contains(stdout.String(), "bob") {
		t.Fatalf("request list (%d):\n%s", code, stdout.String())
	}
}

// operatorPhases reads the operator-log events of request id (as the
// audit service: no person reads the event stream) as "phase by person".
func operatorPhases(t *testing.T, n *node, id string) map[string]bool {
	t.Helper()
	nc, err := nats.Connect(n.natsURL, nats.UserCredentials(filepath.Join(n.dir, "creds", "audit.creds")),
		nats.CustomInboxPrefix(shared.InboxPrefix(shared.UserAudit)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, shared.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{shared.SubjectAuditPrefix + shared.AuditServiceKeyworker + "." + shared.AuditKindOperator + ".>"}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	batch, err := cons.FetchNoWait(10000)
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		ev, err := shared.UnmarshalAuditEvent(m.Data())
		if err != nil || ev.Params["request_id"] != id || ev.CallerType != shared.CallerTypePerson {
			continue
		}
		k := ev.Params["phase"] + " by " + ev.CallerID
		if a := ev.Params["approved_by"]; a != "" {
			k += " approved_by=" + a
		}
		out[k] = true
	}
	return out
}

func signerOf(t *testing.T, creds string) *roster.Signer {
	t.Helper()
	s, err := roster.SignerFromCreds(creds)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// connectAs dials the node's NATS as the holder of creds.
func connectAs(t *testing.T, n *node, creds string) *nats.Conn {
	t.Helper()
	signer, err := roster.SignerFromCreds(creds)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(n.natsURL, nats.UserCredentials(creds), nats.CustomInboxPrefix(shared.InboxPrefix(natsauth.PersonUser(signer.Person))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// seedOf reads the seed of a creds file.
func seedOf(t *testing.T, creds string) []byte {
	t.Helper()
	b, err := os.ReadFile(creds)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return seed
}

// labelOf returns the HSM label of an XKS key.
func labelOf(t *testing.T, n *node, prefix, id string) string {
	t.Helper()
	var keys []struct {
		ID    string `json:"keyId"`
		Label string `json:"label"`
	}
	n.cli(t, &keys, "xks", "key", "list", "--keystore", prefix)
	for _, k := range keys {
		if k.ID == id {
			return k.Label
		}
	}
	t.Fatalf("no key %s in %s: %+v", id, prefix, keys)
	return ""
}
