package unseal

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// connectAs dials the server with a fresh credential of user.
func connectAs(t *testing.T, url, dir string, trust *natsauth.Trust, user string, p natsauth.Permissions) jetstream.KeyValue {
	t.Helper()
	path := filepath.Join(dir, user+".creds")
	if err := trust.WriteUserCreds(path, user, p); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, nats.UserCredentials(path), nats.CustomInboxPrefix(shared.InboxPrefix(user)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if user == shared.UserBootstrap {
		if err := mesh.Bootstrap(t.Context(), js, mesh.DefaultTopology(), []string{testPool}); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := Open(t.Context(), js, mesh.DefaultTopology())
	if err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	return kv
}

// A keyworker credential (the production permission list) watching the
// whole unseal bucket while a keyworker is unsealed sees nothing usable:
// no share line, no share bytes, and ciphertexts its own keys cannot open.
// A key it publishes itself (a stolen credential posing as a keyworker)
// gets no share from a custodian who pins the real keyworker's key.
func TestKeyworkerCredentialSeesNothingUsable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	url := ns.ClientURL()
	connectAs(t, url, dir, trust, shared.UserBootstrap, natsauth.BootstrapPermissions())
	kwPerms := natsauth.ServicePermissions(natsauth.ServiceKeyworker, []string{testPool})
	// The real keyworker runs on the production keyworker permissions.
	kw := startSealed(t, connectAs(t, url, dir, trust, natsauth.ServiceKeyworker, kwPerms), "pin-of-the-hsm-1", Config{Threshold: 2})

	spyKV := connectAs(t, url, dir, trust, natsauth.ServiceKeyworker, kwPerms)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w, err := spyKV.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []jetstream.KeyValueEntry
	go func() {
		for e := range w.Updates() {
			if e != nil {
				mu.Lock()
				seen = append(seen, e)
				mu.Unlock()
			}
		}
	}()
	thief, err := NewKeyPair(testPool)
	if err != nil {
		t.Fatal(err)
	}
	thiefRec, _ := json.Marshal(thief.Record(StateSealed, "", time.Time{}, time.Now()))
	if _, err := spyKV.Put(t.Context(), shared.UnsealKeyKey(testPool, thief.ID), thiefRec); err != nil {
		t.Fatal(err)
	}

	// A custodian with the production role table's permissions.
	custodian := connectAs(t, url, dir, trust, natsauth.PersonUser("ann"), natsauth.PersonPermissions("ann", []natsauth.Role{natsauth.RoleCustodian}))
	recs, err := PublishedKeys(t.Context(), custodian, testPool)
	if err != nil || len(recs) != 2 {
		t.Fatalf("published keys: %d, %v", len(recs), err)
	}
	if _, err := Recipients(testPool, recs, []string{"0123456789abcdef"}); !errors.Is(err, ErrNoKeyworker) {
		t.Fatalf("pinned fingerprint matching no keyworker: %v", err)
	}
	to, err := Recipients(testPool, recs, []string{strings.ToUpper(kw.rec.Fingerprint)})
	if err != nil || len(to) != 1 || to[0].Keyworker != kw.rec.Keyworker {
		t.Fatalf("pinned: %+v %v", to, err)
	}
	shares, err := SplitPIN("pin-of-the-hsm-1", testPool, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	submit(t, custodian, to[0], shares[0], shares[2])
	kw.waitUnsealed(t)
	// The custodian may not publish a keyworker key, nor touch the budget.
	for _, key := range []string{shared.UnsealKeyKey(testPool, "custodian"), shared.UnsealLoginsKey(testPool)} {
		pctx, pcancel := context.WithTimeout(t.Context(), time.Second)
		_, err := custodian.Put(pctx, key, []byte("{}"))
		pcancel()
		if e, gerr := spyKV.Get(t.Context(), key); err == nil || (gerr == nil && string(e.Value()) == "{}") {
			t.Errorf("custodian wrote %s", key)
		}
	}
	cancel()

	mu.Lock()
	defer mu.Unlock()
	sealedSeen := 0
	for _, e := range seen {
		v := e.Value()
		if bytes.Contains(v, []byte("sovkeys-share")) {
			t.Fatalf("%s holds a share line in clear", e.Key())
		}
		for _, s := range shares {
			for _, enc := range [][]byte{s.Share.Y, []byte(base64.RawURLEncoding.EncodeToString(s.Share.Y)), []byte(base64.StdEncoding.EncodeToString(s.Share.Y))} {
				if bytes.Contains(v, enc) {
					t.Fatalf("%s holds share bytes", e.Key())
				}
			}
		}
		if _, err := Parse(string(v)); err == nil {
			t.Fatalf("%s parses as a share", e.Key())
		}
		var ss SealedShare
		if strings.Contains(e.Key(), ".share.") && json.Unmarshal(v, &ss) == nil {
			sealedSeen++
			if ss.Keyworker != kw.rec.Keyworker {
				t.Fatalf("a share went to keyworker %s, not the pinned one", ss.Keyworker)
			}
			// The thief's key, even relabelled as the keyworker's, opens nothing.
			thief.ID, thief.FP = ss.Keyworker, ss.Fingerprint
			if _, err := thief.Open(ss); !errors.Is(err, ErrNotForThisKeyworker) {
				t.Fatalf("a stolen keyworker credential opened a share: %v", err)
			}
		}
	}
	if sealedSeen != 2 {
		t.Fatalf("the watcher saw %d encrypted shares, want 2 (the test watched nothing)", sealedSeen)
	}
}
