package natsauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// The attacker holds ONE credential file of a bootstrapped deployment: the
// production permission lists, the creds files written the way a standalone
// node writes them, the mesh declared by the bootstrap identity. Every
// capability the credential must not have is tried and must be refused.

const pool = "default"

type mesh4 struct {
	ns    *server.Server
	dir   string
	trust *natsauth.Trust
}

func startMesh(t *testing.T) *mesh4 {
	t.Helper()
	dir := t.TempDir()
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	m := &mesh4{ns: ns, dir: dir, trust: trust}
	write := func(user string, p natsauth.Permissions) {
		if err := trust.WriteUserCreds(m.creds(user), user, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, svc := range []string{natsauth.ServiceGateway, natsauth.ServiceAuthn, natsauth.ServiceKeyworker, natsauth.ServiceAudit} {
		write(svc, natsauth.ServicePermissions(svc, []string{pool}))
	}
	// A second gateway instance with its own user, as cluster init mints.
	write("gateway-2", natsauth.UserPermissions("gateway-2", natsauth.ServiceGateway, []string{pool}))
	// People, one per role (and one with every role), as cluster init mints them.
	for name, roles := range people {
		write(natsauth.PersonUser(name), natsauth.PersonPermissions(name, roles))
	}
	write(shared.UserBootstrap, natsauth.BootstrapPermissions())
	write("root", natsauth.Permissions{})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, js := m.connect(t, shared.UserBootstrap, nil)
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{pool}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	// Running it again (a restart, a changed topology) is fine.
	if err := mesh.Bootstrap(ctx, js, mesh.DefaultTopology(), []string{pool}); err != nil {
		t.Fatalf("bootstrap again: %v", err)
	}
	nc.Close()
	return m
}

func (m *mesh4) creds(user string) string { return filepath.Join(m.dir, user+".creds") }

// connect dials as user the production way (mesh.Connect: the user's own
// inbox prefix); errs receives the server's asynchronous refusals.
func (m *mesh4) connect(t *testing.T, user string, errs chan error) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := []nats.Option{nats.UserCredentials(m.creds(user)), nats.CustomInboxPrefix(shared.InboxPrefix(user))}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	// Same identity and inbox as mesh.Connect derives from the creds file.
	if u, err := mesh.CredsUser(m.creds(user)); err != nil || u != user {
		t.Fatalf("creds user %q: %v", u, err)
	}
	nc, err := nats.Connect(m.ns.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// refused asserts the server refuses what try does as user, naming subject.
func (m *mesh4) refused(t *testing.T, user, what, subject string, try func(nc *nats.Conn) error) {
	t.Helper()
	errs := make(chan error, 8)
	nc, _ := m.connect(t, user, errs)
	if err := try(nc); err != nil {
		if strings.Contains(err.Error(), "ermissions") {
			return
		}
		t.Fatalf("%s: %s: %v", user, what, err)
	}
	_ = nc.Flush()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.Contains(err.Error(), "Permissions Violation") && strings.Contains(err.Error(), subject) {
				nc.Close()
				return
			}
		case <-deadline:
			t.Fatalf("%s may %s (%s): not refused", user, what, subject)
		}
	}
}

func (m *mesh4) refusedSub(t *testing.T, user, subject string) {
	t.Helper()
	m.refused(t, user, "subscribe", subject, func(nc *nats.Conn) error {
		_, err := nc.SubscribeSync(subject)
		return err
	})
}

func (m *mesh4) refusedPub(t *testing.T, user, what, subject string) {
	t.Helper()
	m.refused(t, user, what, subject, func(nc *nats.Conn) error {
		return nc.PublishRequest(subject, nc.NewInbox(), []byte("{}"))
	})
}

var services = []string{natsauth.ServiceGateway, natsauth.ServiceAuthn, natsauth.ServiceKeyworker, natsauth.ServiceAudit}

// people are the persons of the attack mesh: one per role, and "root-admin"
// with every role (standalone's first admin).
var people = map[string][]natsauth.Role{
	"alice": {natsauth.RoleAdmin}, "sam": {natsauth.RoleSecurity}, "carol": {natsauth.RoleCustodian},
	"audrey": {natsauth.RoleAuditor}, "root-admin": natsauth.Roles(),
}

// personUsers are the NATS users of people.
func personUsers() []string {
	var out []string
	for name := range people {
		out = append(out, natsauth.PersonUser(name))
	}
	slices.Sort(out)
	return out
}

func TestAttackNoOneReadsAnothersReplies(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	all := append(append([]string{}, services...), "gateway-2")
	for _, user := range all {
		for _, subj := range []string{shared.SubjectSysInboxAll, ">", "_INBOX_authn.>", "_INBOX_keyworker.>", "_INBOX_gateway.>", "_INBOX_operator.>"} {
			if subj == shared.InboxSubjects(user) {
				continue
			}
			m.refusedSub(t, user, subj)
		}
		// Other gateways' reply subjects, and the whole reply space.
		for _, subj := range []string{shared.SubjectReplyPrefix + ">", shared.ReplySubjectPrefix("gateway") + ">", shared.ReplySubjectPrefix("gateway-2") + ">"} {
			if user != "gateway" && user != "gateway-2" || subj != shared.ReplySubjectPrefix(user)+">" {
				m.refusedSub(t, user, subj)
			}
		}
		// Queued plaintext: requests and HSM work are never core-subscribable.
		m.refusedSub(t, user, shared.SubjectRequestPrefix+">")
		m.refusedSub(t, user, shared.SubjectWorkPrefix+">")
	}
	// Only the keyworker serves the admin API; nobody else can listen in
	// on (or answer) seal requests.
	for _, user := range []string{"gateway", "authn", "audit"} {
		m.refusedSub(t, user, shared.KeyworkerAdminSubject(pool, shared.EndpointSeal))
	}
}

func TestAttackSniffUnsealReplySeesCiphertextOnly(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	secret := []byte("SIGV4-SECRET-wJalrXUtnFEMI-K7MDENG")
	// The keyworker's answer, as services/keyworker builds it.
	kw, _ := m.connect(t, "keyworker", nil)
	if _, err := kw.Subscribe(shared.KeyworkerAdminSubject(pool, shared.EndpointUnseal), func(msg *nats.Msg) {
		var req kwadmin.SealRequest
		if err := json.Unmarshal(msg.Data, &req); err != nil || len(req.ReplyKey) == 0 {
			_ = msg.Respond([]byte(`{}`))
			return
		}
		box, err := kwadmin.SealReply(req.ReplyKey, shared.EndpointUnseal, req.RequestID, bytes.Clone(secret))
		if err != nil {
			t.Error(err)
			return
		}
		b, _ := json.Marshal(kwadmin.SealResponse{Box: box})
		_ = msg.Respond(b)
	}); err != nil {
		t.Fatal(err)
	}
	_ = kw.Flush()
	// A tap with every subscribe right (a server-side observer, the
	// operator) records all traffic of the exchange.
	tap, _ := m.connect(t, "root", nil)
	var mu sync.Mutex
	var seen [][]byte
	if _, err := tap.Subscribe(">", func(msg *nats.Msg) {
		mu.Lock()
		seen = append(seen, bytes.Clone(msg.Data))
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	_ = tap.Flush()
	authn, _ := m.connect(t, "authn", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var resp kwadmin.SealResponse
	if err := kwadmin.Call(ctx, authn, pool, kwadmin.EndpointUnseal, kwadmin.SealRequest{Data: []byte("blob"), AAD: []byte("aad")}, &resp); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.Data, secret) {
		t.Fatalf("authn got %q", resp.Data)
	}
	_ = tap.Flush()
	testCheck(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) >= 2 })
	mu.Lock()
	defer mu.Unlock()
	for _, d := range seen {
		if bytes.Contains(d, secret) || bytes.Contains(d, []byte("SIGV4-SECRET")) {
			t.Fatalf("the secret crossed NATS in clear: %q", d)
		}
	}
	// A box for one request does not open for another.
	key, _ := kwadmin.NewReplyKey()
	box, _ := kwadmin.SealReply(key.PublicKey().Bytes(), shared.EndpointUnseal, "req-1", secret)
	if _, err := kwadmin.OpenReply(key, shared.EndpointUnseal, "req-2", box); err == nil {
		t.Fatal("reply box opened for another request id")
	}
	if _, err := kwadmin.OpenReply(key, shared.EndpointSeal, "req-1", box); err == nil {
		t.Fatal("reply box opened for another endpoint")
	}
	other, _ := kwadmin.NewReplyKey()
	if _, err := kwadmin.OpenReply(other, shared.EndpointUnseal, "req-1", box); err == nil {
		t.Fatal("reply box opened with another key")
	}
	// An answer in clear is refused by the client.
	if _, err := kwadmin.OpenReply(key, shared.EndpointUnseal, "req-1", nil); err == nil {
		t.Fatal("clear answer accepted")
	}
}

func testCheck(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAttackServicesDoNotAdminister(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	streams := []string{shared.StreamRequests, shared.StreamAudit, shared.StreamAuditLog, shared.WorkStream(pool),
		// The sibling streams (mesh/siblings.go) are guarded like the first.
		shared.SiblingStream(shared.StreamRequests, 2), shared.SiblingStream(shared.StreamAudit, 1), shared.SiblingStream(shared.WorkStream(pool), 4),
		shared.ObjectStream(shared.BucketEKTObjects), shared.KVStream(shared.BucketEKTIndex), shared.KVStream(shared.BucketPKI),
		shared.KVStream(shared.BucketKeystores), shared.KVStream(shared.BucketTenants), shared.KVStream(shared.BucketKillSwitch), "NEW_STREAM"}
	for _, user := range services {
		for _, s := range streams {
			for _, api := range []string{shared.JSStreamCreate, shared.JSStreamUpdate, shared.JSStreamDelete, shared.JSStreamPurge, shared.JSStreamMsgDelete} {
				if user == shared.UserAudit && api == shared.JSStreamPurge && strings.HasPrefix(s, shared.StreamAudit) {
					continue // the one purge it has: numbered events leave the event stream
				}
				m.refusedPub(t, user, "administer streams", api+s)
			}
		}
		// Writes outside the job: PKI of another pool (and all of it but
		// the keyworker's own), key stores, tenants, kill switches.
		for _, subj := range []string{shared.SubjectKVPrefix + shared.BucketKillSwitch + ".all", shared.SubjectKVPrefix + shared.BucketPKI + ".other." + "instance_ca"} {
			m.refusedPub(t, user, "write KV", subj)
		}
		// Only authn writes the registry, on people's signed requests
		// (services/authn/admin.go).
		if user != natsauth.ServiceAuthn {
			for _, subj := range []string{shared.SubjectKVPrefix + shared.BucketKeystores + ".x", shared.SubjectKVPrefix + shared.BucketXKSKeys + ".x",
				shared.SubjectKVPrefix + shared.BucketTenants + ".x"} {
				m.refusedPub(t, user, "write KV", subj)
			}
		}
		if user != natsauth.ServiceKeyworker {
			m.refusedPub(t, user, "write PKI", shared.SubjectKVPrefix+shared.BucketPKI+"."+shared.PKIInstanceCA(pool))
			m.refusedPub(t, user, "write the EKT store", shared.SubjectObjectPrefix+shared.BucketEKTObjects+".C.x")
			m.refusedPub(t, user, "write the EKT index", shared.SubjectKVPrefix+shared.BucketEKTIndex+".x")
			m.refusedPub(t, user, "write unseal shares", shared.SubjectKVPrefix+shared.BucketUnseal+"."+pool+".1")
			m.refusedSub(t, user, shared.KeyworkerAdminSubject(pool, shared.EndpointUnseal))
		}
		if user != natsauth.ServiceAuthn {
			m.refusedPub(t, user, "queue HSM work", shared.WorkSubject(pool, shared.APIXKSEncrypt))
			m.refusedPub(t, user, "queue HSM work on a sibling", shared.WorkSubjectOn(3, pool, shared.APIXKSEncrypt))
			m.refusedPub(t, user, "ask for an unseal", shared.KeyworkerAdminSubject(pool, shared.EndpointUnseal))
		}
		if user != natsauth.ServiceAudit {
			m.refusedPub(t, user, "write the audit log", shared.SubjectAuditRecordPrefix+"xks.x")
			m.refusedPub(t, user, "sign audit checkpoints", shared.KeyworkerAdminSubject(pool, shared.EndpointAuditSign))
		}
		m.refusedPub(t, user, "create a consumer on another's queue", shared.JSConsumerCreate+shared.WorkStream(pool)+".steal")
		m.refusedPub(t, user, "create a consumer on another's queue", shared.JSConsumerCreate+shared.SiblingStream(shared.WorkStream(pool), 1)+".steal")
	}
	// The audit service never reads the plaintext queues or unseal shares.
	for _, s := range []string{shared.StreamRequests, shared.WorkStream(pool), shared.KVStream(shared.BucketUnseal),
		shared.SiblingStream(shared.StreamRequests, 1), shared.SiblingStream(shared.WorkStream(pool), 2)} {
		m.refusedPub(t, "audit", "read a queue", shared.JSStreamMsgGet+s)
		m.refusedPub(t, "audit", "read a queue", shared.JSConsumerCreate+s)
	}
	// The bootstrap identity declares; it destroys nothing and reads no message.
	for _, s := range streams {
		m.refusedPub(t, shared.UserBootstrap, "delete a stream", shared.JSStreamDelete+s)
		m.refusedPub(t, shared.UserBootstrap, "purge a stream", shared.JSStreamPurge+s)
	}
	m.refusedPub(t, shared.UserBootstrap, "read KV", shared.JSDirectGet+shared.KVStream(shared.BucketKeystores))
	m.refusedSub(t, shared.UserBootstrap, "_INBOX_authn.>")
}

func TestAttackAuditSubjectsPerService(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	owners := []string{shared.AuditServiceGateway, shared.AuditServiceAuthn, shared.AuditServiceKeyworker, shared.AuditServiceCLI, shared.AuditServiceAudit}
	for _, user := range append(services, personUsers()...) {
		for _, owner := range owners {
			if owner == user {
				continue // its own
			}
			m.refusedPub(t, user, "publish another service's audit event", shared.AuditSubjectPrefix(owner)+"xks.x")
			m.refusedPub(t, user, "publish another service's audit event on a sibling", shared.AuditSubjectOn(2, owner, "xks", "x"))
			m.refusedPub(t, user, "publish another service's audit batch", shared.AuditBatchSubjectOn(1, owner))
		}
	}
}

func TestAttackWriteOnceStores(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Nobody holds delete or purge rights on the EKT store or the audit log,
	// not even a person with every role.
	for _, user := range append(services, personUsers()...) {
		for _, s := range []string{shared.ObjectStream(shared.BucketEKTObjects), shared.KVStream(shared.BucketEKTIndex), shared.StreamAuditLog} {
			m.refusedPub(t, user, "delete a write-once store", shared.JSStreamDelete+s)
			m.refusedPub(t, user, "purge a write-once store", shared.JSStreamPurge+s)
			m.refusedPub(t, user, "reconfigure a write-once store", shared.JSStreamUpdate+s)
		}
	}
	// And the streams themselves refuse it, whoever asks (root: a leaked
	// account key, a misconfigured user).
	_, root := m.connect(t, "root", nil)
	obj, err := root.Stream(ctx, shared.ObjectStream(shared.BucketEKTObjects))
	if err != nil {
		t.Fatal(err)
	}
	if !obj.CachedInfo().Config.DenyDelete {
		t.Fatal("EKT object stream allows message deletes")
	}
	idx, err := root.Stream(ctx, shared.KVStream(shared.BucketEKTIndex))
	if err != nil {
		t.Fatal(err)
	}
	if c := idx.CachedInfo().Config; !c.DenyDelete || !c.DenyPurge || c.AllowRollup || !c.DiscardNewPerSubject || c.MaxMsgsPerSubject != 1 {
		t.Fatalf("EKT index not hardened: %+v", c)
	}
	kv, err := root.KeyValue(ctx, shared.BucketEKTIndex)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "tenant=2ekey", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "tenant=2ekey", []byte("v2")); err == nil {
		t.Fatal("EKT index entry overwritten")
	}
	if err := idx.Purge(ctx); err == nil {
		t.Fatal("EKT index purged")
	}
	if err := idx.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("EKT index message deleted")
	}
	log, err := root.Stream(ctx, shared.StreamAuditLog)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Publish(ctx, shared.SubjectAuditRecordPrefix+"xks.x", []byte("r")); err != nil {
		t.Fatal(err)
	}
	if err := log.Purge(ctx); err == nil {
		t.Fatal("audit log purged")
	}
	if err := log.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("audit log message deleted")
	}
	// Undoing the hardening is refused by JetStream itself.
	cfg := idx.CachedInfo().Config
	cfg.DenyDelete, cfg.DenyPurge = false, false
	if _, err := root.UpdateStream(ctx, cfg); err == nil {
		t.Fatal("EKT index hardening undone")
	}
}

// Each service can still bind and do its job with its own rights.
func TestServicesBindAndWork(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo := mesh.DefaultTopology()
	gwNC, gw := m.connect(t, "gateway", nil)
	if _, err := mesh.EnsureRequestStreams(ctx, gw, topo); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Publish(ctx, shared.RequestSubject(shared.APIXKSEncrypt), []byte("req")); err != nil {
		t.Fatalf("gateway cannot queue a request: %v", err)
	}
	if _, err := gwNC.SubscribeSync(mesh.ReplySubjectPrefix(gwNC) + "abc"); err != nil {
		t.Fatal(err)
	}
	_, authn := m.connect(t, "authn", nil)
	if _, err := mesh.EnsureWorkStreams(ctx, authn, pool, topo); err != nil {
		t.Fatal(err)
	}
	if _, err := authn.Publish(ctx, shared.WorkSubject(pool, shared.APIXKSEncrypt), []byte("work")); err != nil {
		t.Fatalf("authn cannot queue work: %v", err)
	}
	for _, b := range []string{shared.BucketKeystores, shared.BucketTenants, shared.BucketPKI, shared.BucketKillSwitch} {
		if _, err := mesh.EnsureBucket(ctx, authn, b, "", topo); err != nil {
			t.Fatalf("authn binds %s: %v", b, err)
		}
	}
	_, kw := m.connect(t, "keyworker", nil)
	pki, err := mesh.EnsureBucket(ctx, kw, shared.BucketPKI, "", topo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Create(ctx, shared.PKIInstanceCA(pool), []byte("ca")); err != nil {
		t.Fatalf("keyworker cannot publish its CA: %v", err)
	}
	_, audit := m.connect(t, "audit", nil)
	if _, err := audit.Publish(ctx, shared.SubjectAuditRecordPrefix+"xks.x", []byte("r")); err != nil {
		t.Fatalf("audit cannot append to the log: %v", err)
	}
}

// `sovkeys standalone` connects its services through the embedded server's
// in-process pipe (mesh.ConnConfig.InProcess): the same credentials, the
// same permissions; no credentials, no connection.
func TestAttackInProcessConnectionsKeepPermissions(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	if _, err := nats.Connect("", nats.InProcessServer(m.ns)); err == nil { // refused after the server's 10 s auth wait
		t.Fatal("an in-process connection without credentials was accepted")
	}
	errs := make(chan error, 8)
	nc, err := nats.Connect("", nats.InProcessServer(m.ns), nats.UserCredentials(m.creds(natsauth.ServiceGateway)),
		nats.CustomInboxPrefix(shared.InboxPrefix(natsauth.ServiceGateway)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subject := range []string{shared.AuditBatchSubjectOn(0, shared.AuditServiceKeyworker), shared.WorkSubject(pool, shared.APIXKSEncrypt)} {
		if err := nc.Publish(subject, []byte("{}")); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), subject) {
				t.Fatalf("publish %s in process as the gateway: %v", subject, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the gateway may publish %s over an in-process connection", subject)
		}
	}
}
