package clusterinit

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit"
)

// Attacks on the identities and the cluster boundary (issue 20, items 4
// and 5): an expired credential, a revoked one, a route or a client
// without the cluster's certificates.

func refusedAuth(t *testing.T, what string, nc *nats.Conn, err error) {
	t.Helper()
	if err == nil {
		nc.Close()
		t.Fatalf("%s: connected", what)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "authorization") && !strings.Contains(strings.ToLower(err.Error()), "expired") {
		t.Fatalf("%s: refused for another reason: %v", what, err)
	}
}

func userKey(t *testing.T, path string) string {
	t.Helper()
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

func copyFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every issued user expires (default 90 days); an expired user JWT is
// refused at connect.
func TestExpiredCredentialRefused(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Config{Dir: dir, Nodes: 1, Users: services, PortBase: freeBase(t)})
	if err != nil {
		t.Fatal(err)
	}
	for u, p := range res.Creds {
		b, _ := os.ReadFile(p)
		uc, err := decodeCreds(b)
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(time.Unix(uc.Expires, 0)); left < 89*24*time.Hour || left > 91*24*time.Hour {
			t.Errorf("%s expires in %s, want 90 days", u, left)
		}
	}
	startCluster(t, res)
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	creds, _, err := trust.IssueUserUntil("gateway", natsauth.ServicePermissions("gateway", res.Pools), time.Now().Add(-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	expired := filepath.Join(t.TempDir(), "expired.creds")
	if err := os.WriteFile(expired, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := dial(res, expired)
	refusedAuth(t, "expired credential", nc, err)
	if nc, err := dial(res, res.Creds["gateway"]); err != nil {
		t.Fatalf("the current gateway credential: %v", err)
	} else {
		nc.Close()
	}
}

// --revoke USER: the user's connections are closed within seconds of the
// reload and it cannot reconnect; --rotate USER: a service holding the
// file keeps serving on the new credential while the old key is revoked.
func TestRevokeAndRotateLive(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Config{Dir: dir, Nodes: 3, Users: services, PortBase: freeBase(t)})
	if err != nil {
		t.Fatal(err)
	}
	servers := startCluster(t, res)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The audit user, connected and reconnecting forever, is revoked.
	stolen := copyFile(t, res.Creds["audit"])
	closed := make(chan error, 4)
	victim, err := dial(res, stolen, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { closed <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	// authn, connected as a service is (mesh.Connect watches its file),
	// answers requests on its inbox-free subject.
	authn, _, err := mesh.Connect(ctx, mesh.ConnConfig{URL: res.URLs, CredsFile: res.Creds["authn"], CAFile: res.CAFile, Name: "sovkeys-authn"}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer authn.Close()
	oldAuthn := userKey(t, res.Creds["authn"])
	authnFile, err := os.Stat(res.Creds["authn"])
	if err != nil {
		t.Fatal(err)
	}

	again, err := Init(Config{Dir: dir, Revoke: []string{"audit"}, Rotate: []string{"authn"}})
	if err != nil {
		t.Fatal(err)
	}
	if !again.NodesChanged || !slices.Contains(again.Suspended, "audit") {
		t.Fatalf("nodes changed %v, suspended %v", again.NodesChanged, again.Suspended)
	}
	if _, err := os.Stat(filepath.Join(dir, "creds", "audit.creds")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("revoked audit creds still on disk: %v", err)
	}
	if userKey(t, again.Creds["authn"]) == oldAuthn {
		t.Fatal("rotate kept the authn key")
	}
	// Rewritten in place: a bind mount of the file shows the new key.
	if fi, err := os.Stat(again.Creds["authn"]); err != nil || !os.SameFile(fi, authnFile) {
		t.Fatalf("rotated authn creds are a new file: %v", err)
	}
	start := time.Now()
	done, err := Reload(ctx, ReloadConfig{Dir: dir, URLs: again.URLs, CAFile: again.CAFile, Nodes: 3})
	if err != nil || len(done) != 3 {
		t.Fatalf("reload: %v %v", done, err)
	}
	select {
	case <-closed:
		t.Logf("revoked connection closed %s after the reload request", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked user's connection is still open 5 s after the reload")
	}
	// Every node refuses the revoked key (within seconds: the issue's bound).
	for _, node := range again.Nodes {
		tries := 0
		testkit.CheckFor(t, 5*time.Second, 100*time.Millisecond, func() error {
			tries++
			nc, err := nats.Connect(node.ClientURL(), nats.UserCredentials(stolen), nats.RootCAs(again.CAFile))
			if err == nil {
				nc.Close()
				return errors.New(node.Name + " still accepts the revoked audit key")
			}
			if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Fatalf("%s refused the revoked key for another reason: %v", node.Name, err)
			}
			return nil
		})
		if tries > 1 {
			t.Logf("%s refused the revoked key after %d tries", node.Name, tries)
		}
	}
	// authn keeps serving: its connection is on the rotated key.
	newAuthn := userKey(t, again.Creds["authn"])
	testkit.CheckFor(t, 15*time.Second, 200*time.Millisecond, func() error {
		if !authn.IsConnected() {
			return errors.New("authn not connected")
		}
		if err := authn.FlushTimeout(time.Second); err != nil {
			return err
		}
		for _, s := range servers {
			cz, err := s.Connz(&server.ConnzOptions{Username: true})
			if err != nil {
				return err
			}
			for _, c := range cz.Conns {
				if c.Name == "sovkeys-authn" && c.AuthorizedUser == newAuthn {
					return nil
				}
			}
		}
		return errors.New("authn not on its rotated key")
	})
	// A plain run keeps audit suspended; --rotate audit brings it back.
	if r, err := Init(Config{Dir: dir}); err != nil || r.Creds["audit"] != "" {
		t.Fatalf("plain run re-issued suspended audit: %v %v", r.Creds, err)
	}
	back, err := Init(Config{Dir: dir, Rotate: []string{"audit"}})
	if err != nil || back.Creds["audit"] == "" || len(back.Suspended) != 0 {
		t.Fatalf("rotate audit: %+v %v", back, err)
	}
	if _, err := Reload(ctx, ReloadConfig{Dir: dir, URLs: back.URLs, CAFile: back.CAFile, Nodes: 3}); err != nil {
		t.Fatal(err)
	}
	if nc, err := dial(back, back.Creds["audit"]); err != nil {
		t.Fatalf("re-issued audit: %v", err)
	} else {
		nc.Close()
	}
	// A public key, such as a leaked copy's, is revoked by itself.
	leak := userKey(t, back.Creds["gateway"])
	if _, err := Init(Config{Dir: dir, Revoke: []string{leak}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "trust", "account.jwt"))
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{leak, oldAuthn} {
		if _, ok := ac.Revocations[k]; !ok {
			t.Errorf("%s not in the account's revocations", k)
		}
	}
}

// A node of the cluster refuses a route from a server without a
// certificate of the cluster CA (plain, or from another CA), and a client
// that does not speak TLS.
func TestClusterRefusesStrangers(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Config{Dir: dir, Nodes: 2, Users: services, PortBase: freeBase(t)})
	if err != nil {
		t.Fatal(err)
	}
	servers := startCluster(t, res)
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if servers[0].NumRoutes() < 1 {
			return errors.New("nodes not routed")
		}
		return nil
	})

	// Another CA's node certificate, made the same way.
	other, err := Init(Config{Dir: t.TempDir(), Nodes: 2, PortBase: freeBase(t)})
	if err != nil {
		t.Fatal(err)
	}
	otherCert := filepath.Join(other.Dir, ClusterTLSDir, "n1.pem")
	otherKey := filepath.Join(other.Dir, ClusterTLSDir, "n1.key")
	otherCA := filepath.Join(other.Dir, ClusterTLSDir, "ca.pem")
	ours := func(f string) string { return filepath.Join(dir, ClusterTLSDir, f) }
	// The control runs last: the routes it makes take a moment to go.
	for _, tc := range []struct {
		name string
		conf func() (*tls.Config, error)
	}{
		{"plain", func() (*tls.Config, error) { return nil, nil }},
		{"another CA", func() (*tls.Config, error) {
			return server.GenTLSConfig(&server.TLSConfigOpts{CertFile: otherCert, KeyFile: otherKey, CaFile: otherCA})
		}},
		// Control: with a certificate of the cluster CA the same server joins.
		{"control, our CA", func() (*tls.Config, error) {
			return server.GenTLSConfig(&server.TLSConfigOpts{CertFile: ours("n2.pem"), KeyFile: ours("n2.key"), CaFile: ours("ca.pem")})
		}},
	} {
		name := tc.name
		t.Run(name, func(t *testing.T) {
			tc, err := tc.conf()
			if err != nil {
				t.Fatal(err)
			}
			route := fmt.Sprintf("nats-route://127.0.0.1:%d", res.Nodes[0].ClusterPort)
			opts := &server.Options{ServerName: "intruder", Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
				Cluster: server.ClusterOpts{Name: "sovkeys", Host: "127.0.0.1", Port: -1, TLSConfig: tc, TLSTimeout: 2}}
			opts.Routes = server.RoutesFromStr(route)
			if tc != nil {
				tc.RootCAs = tc.ClientCAs
			}
			s, err := server.NewServer(opts)
			if err != nil {
				t.Fatal(err)
			}
			s.Start()
			defer func() { s.Shutdown(); s.WaitForShutdown() }()
			if strings.HasPrefix(name, "control") {
				testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
					rz, err := servers[0].Routez(nil)
					if err != nil {
						return err
					}
					for _, r := range rz.Routes {
						if r.RemoteID == s.ID() {
							return nil
						}
					}
					return errors.New("a server with the cluster's certificate did not route to node 1")
				})
				return
			}
			// The intruder keeps dialling; give it a few attempts.
			time.Sleep(1500 * time.Millisecond)
			rz, err := servers[0].Routez(nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rz.Routes {
				if r.RemoteID == s.ID() {
					t.Fatalf("node 1 has a route to the intruder: %+v", r)
				}
			}
			if s.NumRoutes() != 0 {
				t.Fatalf("intruder routed: %d", s.NumRoutes())
			}
		})
	}
	// A client in plain text, with a valid credential, is refused.
	if nc, err := nats.Connect(res.URLs, nats.UserCredentials(res.Creds["gateway"])); err == nil {
		nc.Close()
		t.Fatal("plain-text client connected")
	}
	// A client that verifies with another CA refuses the nodes.
	if nc, err := nats.Connect(res.URLs, nats.UserCredentials(res.Creds["gateway"]), nats.RootCAs(otherCA)); err == nil {
		nc.Close()
		t.Fatal("client trusting another CA connected")
	}
}

// A cluster directory written by the release before expiring identities
// (non-expiring user JWTs, no TLS, no validity in cluster.json): the next
// cluster init re-issues every credential with an expiry, revokes each old
// key, and closes the cluster with its own CA.
func TestUpgradeFromNonExpiringCredentials(t *testing.T) {
	dir := t.TempDir()
	res, err := Init(Config{Dir: dir, Nodes: 1, Users: services, PortBase: freeBase(t),
		Operators: []PersonSpec{{Name: "alice", Roles: []natsauth.Role{natsauth.RoleAdmin}}}})
	if err != nil {
		t.Fatal(err)
	}
	// Play the earlier release: every credential without an expiry, no
	// cluster CA, a state file without the new settings.
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{PersonCredsFile(dir, "alice"): natsauth.PersonUser("alice")}
	for u, p := range res.Creds {
		files[p] = u
	}
	old := map[string]string{} // file -> old key
	for p, name := range files {
		b, _ := os.ReadFile(p)
		uc, err := decodeCreds(b)
		if err != nil {
			t.Fatal(err)
		}
		perms := natsauth.Permissions{Pub: uc.Pub.Allow, Sub: uc.Sub.Allow, DenyPub: uc.Pub.Deny, DenySub: uc.Sub.Deny, Respond: uc.Resp != nil}
		creds, pub, err := trust.IssueUserUntil(name, perms, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		old[p] = pub
	}
	if err := os.RemoveAll(filepath.Join(dir, ClusterTLSDir)); err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, StateFile))
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	delete(st, "validity")
	delete(st, "monitor_host")
	b, _ = json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := map[string]string{}
	for p := range old {
		stale[p] = copyFile(t, p)
	}

	up, err := Init(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if up.CAFile == "" || !up.NodesChanged {
		t.Fatalf("upgrade: CA %q, nodes changed %v", up.CAFile, up.NodesChanged)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "trust", "account.jwt"))
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for p, pub := range old {
		if _, ok := ac.Revocations[pub]; !ok {
			t.Errorf("%s: old key not revoked", p)
		}
		nb, _ := os.ReadFile(p)
		uc, err := decodeCreds(nb)
		if err != nil || uc.Expires == 0 || uc.Subject == pub {
			t.Errorf("%s not re-issued with an expiry: %v", p, err)
		}
	}
	startCluster(t, up)
	for p := range old {
		nc, err := dial(up, stale[p])
		refusedAuth(t, "pre-upgrade "+filepath.Base(p), nc, err)
		if nc, err := dial(up, p); err != nil {
			t.Errorf("re-issued %s: %v", p, err)
		} else {
			nc.Close()
		}
	}
}
