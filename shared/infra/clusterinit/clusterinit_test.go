package clusterinit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

var services = []string{"gateway", "authn", "keyworker", "audit"}

// freeBase finds a port base with the 3 x 3 ports of a 3-node cluster free.
func freeBase(t *testing.T) int {
	return testkit.FreePortBase(t, 0, 1, 2, 100, 101, 102, 200, 201, 202)
}

// startCluster runs every node of res in this process from its config file.
func startCluster(t *testing.T, res *Result) []*server.Server {
	t.Helper()
	var servers []*server.Server
	for _, n := range res.Nodes {
		opts, err := server.ProcessConfigFile(n.ConfigFile)
		if err != nil {
			t.Fatalf("%s: %v", n.ConfigFile, err)
		}
		opts.NoSigs, opts.NoLog = true, os.Getenv("CLUSTERINIT_LOG") == ""
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		servers = append(servers, s)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("node not ready")
		}
	}
	return servers
}

// dial connects to the cluster of res with creds file creds over TLS,
// verifying the nodes with the cluster CA.
func dial(res *Result, creds string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(res.URLs, append([]nats.Option{nats.UserCredentials(creds), nats.RootCAs(res.CAFile)}, opts...)...)
}

func TestInitRunsAThreeNodeCluster(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Config{Dir: dir, Nodes: 3, Users: services, PortBase: freeBase(t),
		Operators: []PersonSpec{{Name: "alice", Roles: []natsauth.Role{natsauth.RoleAdmin}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) != 3 || len(res.Creds) != 5 || len(res.People) != 1 { // four services, bootstrap; one person
		t.Fatalf("nodes %d creds %d people %d", len(res.Nodes), len(res.Creds), len(res.People))
	}
	for _, n := range res.Nodes {
		b, err := os.ReadFile(n.ConfigFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"max_control_line: 64KB", "resolver_preload", "routes", "jetstream", "tls {", "ca_file", "http: \"127.0.0.1:"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q", n.Name, want)
			}
		}
	}
	for _, f := range []string{"trust/operator.nk", "trust/account.nk", "creds/keyworker-default.creds", "creds/authn.workkey", "operators/alice.creds", "trust/roster.json"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	startCluster(t, res)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func(user string) (*nats.Conn, jetstream.JetStream) {
		nc, err := dial(res, res.Creds[user], nats.MaxReconnects(-1), nats.CustomInboxPrefix(shared.InboxPrefix(user)))
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}
	// The bootstrap identity declares an R3 stream once the cluster has a meta leader.
	_, js := connect(shared.UserBootstrap)
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
		if err != nil {
			t.Log(err)
		}
		return err
	})
	// A service user is confined to its table: the gateway may not queue HSM work.
	gw, _ := connect("gateway")
	sub, err := gw.SubscribeSync(shared.SubjectWorkPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	_ = sub
	if err := gw.Flush(); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if !errors.Is(gw.LastError(), nats.ErrPermissionViolation) {
			return errors.New("no permission violation yet")
		}
		return nil
	})
}

func TestInitAgainAddsAPoolKeepingEverythingElse(t *testing.T) {
	dir := t.TempDir()
	base := freeBase(t)
	first, err := Init(Config{Dir: dir, Nodes: 3, Users: services, PortBase: base})
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	opSeed, gwCreds, oldKW, conf := read("trust/operator.nk"), read("creds/gateway.creds"), read("creds/keyworker-default.creds"), read("nats/n1.conf")

	// Same again: nothing is rewritten.
	again, err := Init(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Written) != 0 {
		t.Fatalf("idempotent run rewrote %v", again.Written)
	}
	// A new pool: only the users whose permissions name pools change.
	more, err := Init(Config{Dir: dir, Pools: []string{"hsm2"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(more.Pools, []string{"default", "hsm2"}) {
		t.Fatalf("pools %v", more.Pools)
	}
	if read("trust/operator.nk") != opSeed || read("creds/gateway.creds") != gwCreds {
		t.Fatal("adding a pool changed the operator seed or the gateway's creds")
	}
	// The node configs change only by the account JWT, which now revokes
	// the users whose permissions named the pools (authn).
	if !more.NodesChanged || read("nats/n1.conf") == conf {
		t.Fatal("node configs do not carry the new revocation")
	}
	// One keyworker user per pool: the new pool's names only its own queue,
	// the first pool's is kept as it was.
	kw := read("creds/keyworker-hsm2.creds")
	if !strings.Contains(string(mustDecode(t, kw)), shared.WorkStream("hsm2")) || strings.Contains(string(mustDecode(t, kw)), shared.WorkStream("default")+" ") {
		t.Fatal("the hsm2 keyworker creds do not name (only) the new pool's work stream")
	}
	if read("creds/keyworker-default.creds") != oldKW {
		t.Fatal("adding a pool rewrote the default pool's keyworker creds")
	}
	// Both pools' keyworker users connect.
	startCluster(t, first)
	for _, c := range []string{more.Creds[shared.KeyworkerUser("default")], more.Creds[shared.KeyworkerUser("hsm2")]} {
		nc, err := dial(more, c)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		nc.Close()
	}
}

// The one keyworker user of every pool that earlier versions wrote is
// revoked and deleted on upgrade.
func TestInitRevokesTheAllPoolsKeyworker(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(Config{Dir: dir, Nodes: 1, Users: services, PortBase: freeBase(t)}); err != nil {
		t.Fatal(err)
	}
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(dir, "creds", LegacyKeyworkerCreds)
	if err := trust.WriteUserCreds(legacy, shared.UserKeyworker, natsauth.ServicePermissions(shared.UserKeyworker, []string{"default"})); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(legacy)
	uc, err := decodeCreds(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(Config{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Fatalf("legacy keyworker creds still there: %v", err)
	}
	trust, err = natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	if !trust.Revoked(uc.Subject) {
		t.Fatal("legacy keyworker key not revoked")
	}
}

func mustDecode(t *testing.T, creds string) []byte {
	t.Helper()
	uc, err := decodeCreds([]byte(creds))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.Join(uc.Permissions.Pub.Allow, " "))
}

func TestInitRefuses(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no dir":        {},
		"unknown user":  {Users: []string{"intruder"}},
		"operator user": {Users: []string{shared.UserOperator}},
		"bad person":    {Operators: []PersonSpec{{Name: "Bad Name", Roles: []natsauth.Role{natsauth.RoleAdmin}}}},
		"remove nobody": {RemoveOperators: []string{"nobody"}},
		"bad pool":      {Pools: []string{"a b"}},
		"hosts":         {Nodes: 3, Hosts: []string{"a", "b"}},
		"half tls":      {TLS: TLSFiles{CertFile: "c.pem"}},
		"nodes":         {Nodes: 12},
	} {
		t.Run(name, func(t *testing.T) {
			if name != "no dir" {
				cfg.Dir = t.TempDir()
			}
			if _, err := Init(cfg); !errors.Is(err, ErrInit) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// A removed person's credential is deleted and its key revoked in the
// account JWT every node preloads; the shared operator credential of an
// earlier version is revoked the same way.
func TestInitRemovesPeopleAndRevokes(t *testing.T) {
	dir := t.TempDir()
	alice := PersonSpec{Name: "alice", Roles: []natsauth.Role{natsauth.RoleAdmin, natsauth.RoleSecurity}}
	if _, err := Init(Config{Dir: dir, Nodes: 1, PortBase: freeBase(t), Operators: []PersonSpec{alice, {Name: "bob", Roles: []natsauth.Role{natsauth.RoleAuditor}}}}); err != nil {
		t.Fatal(err)
	}
	// What an earlier version left: a shared operator credential.
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.WriteUserCreds(filepath.Join(dir, LegacyOperatorCreds), shared.UserOperator, natsauth.Permissions{}); err != nil {
		t.Fatal(err)
	}
	subject := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		uc, err := decodeCreds(b)
		if err != nil {
			t.Fatal(err)
		}
		return uc.Subject
	}
	legacy, bob := subject(filepath.Join(dir, LegacyOperatorCreds)), subject(PersonCredsFile(dir, "bob"))
	res, err := Init(Config{Dir: dir, RemoveOperators: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.People) != 1 || res.People[0].Name != "alice" {
		t.Fatalf("people %+v", res.People)
	}
	for _, f := range []string{PersonCredsFile(dir, "bob"), filepath.Join(dir, LegacyOperatorCreds)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "trust", "account.jwt"))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{legacy, bob} {
		if _, ok := ac.Revocations[k]; !ok {
			t.Errorf("%s not revoked in the account JWT", k)
		}
	}
	conf, err := os.ReadFile(res.Nodes[0].ConfigFile)
	if err != nil || !strings.Contains(string(conf), strings.TrimSpace(string(b))) {
		t.Fatalf("node config does not preload the new account JWT: %v", err)
	}
	entries, err := ReadRoster(filepath.Join(dir, "trust", RosterFile))
	if err != nil || len(entries) != 1 || entries[0].Name != "alice" || len(entries[0].Roles) != 2 {
		t.Fatalf("roster %+v %v", entries, err)
	}
}
