package main

// `loadtest keys`: registers many XKS keys at once, as `sovkeys xks key
// create` does one by one (an HSM key through the pool's keyworker, then
// its registry entry), from one process with several calls in flight: the
// key-count benchmark (keys-scale.sh) needs 10,000 keys, and a CLI process
// per key costs more than the key. With -kind keystores or tenants it makes
// key stores (`sovkeys xks keystore create`: a credential sealed by the
// pool's keyworker, then the registry entry) or tenants (`sovkeys tenant
// create`: a registry entry) the same way.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

func runKeys(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest keys", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats", envOr(getenv, "SOVKEYS_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL (env SOVKEYS_NATS_URL)")
	creds := fs.String("nats-creds", getenv("SOVKEYS_NATS_CREDS"), "a person's credentials `FILE`, admin role (env SOVKEYS_NATS_CREDS)")
	prefix := fs.String("keystore", "", "key store URI prefix (required)")
	idPrefix := fs.String("id-prefix", "scale-key-", "key ids are this followed by a number")
	from := fs.Int("from", 0, "first key number")
	count := fs.Int("count", 0, "keys to create (at most 100,000)")
	jobs := fs.Int("jobs", 4, "creations in flight at once")
	kind := fs.String("kind", "keys", "keys (XKS keys of -keystore) | keystores | tenants (ids are -id-prefix and a number)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	p := strings.Trim(*prefix, "/")
	if (*kind == "keys" && !xks.ValidPrefix(p)) || *count < 1 || *count > 100_000 || *jobs < 1 || *jobs > 64 ||
		(*kind != "keys" && *kind != "keystores" && *kind != "tenants") {
		fmt.Fprintln(stderr, "loadtest keys: -kind (keys, keystores, tenants), -keystore (keys), -count (1-100000) and -jobs (1-64) are required")
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, js, err := mesh.Connect(ctx, mesh.ConnConfig{URL: *natsURL, CredsFile: *creds, Name: "sovkeys-loadtest-keys"}, logger)
	if err != nil {
		fmt.Fprintln(stderr, "loadtest keys:", err)
		return 1
	}
	defer nc.Close()
	reg, err := registry.Open(ctx, js, mesh.DefaultTopology())
	if err != nil {
		fmt.Fprintln(stderr, "loadtest keys:", err)
		return 1
	}
	// Keys are made as a person makes them: HSM key and registry entry by
	// signed requests (the keyworker and authn verify and audit them).
	signer, err := roster.SignerFromCreds(*creds)
	if err != nil {
		fmt.Fprintln(stderr, "loadtest keys: a person's credential (with the admin role) is needed:", err)
		return 1
	}
	ctx = kwadmin.WithSigner(ctx, signer)
	reg.Keys = roster.RegistryKV{KeyValue: reg.Keys, NC: nc, Op: func() (string, map[string]string) {
		return "key.create", map[string]string{"keystore": p, "source": "loadtest keys"}
	}}
	reg.Keystores = roster.RegistryKV{KeyValue: reg.Keystores, NC: nc, Op: func() (string, map[string]string) {
		return "keystore.create", map[string]string{"source": "loadtest keys"}
	}}
	tenants, err := registry.OpenTenants(ctx, js, mesh.DefaultTopology())
	if err != nil {
		fmt.Fprintln(stderr, "loadtest keys:", err)
		return 1
	}
	tenants.KV = roster.RegistryKV{KeyValue: tenants.KV, NC: nc, Op: func() (string, map[string]string) {
		return "tenant.create", map[string]string{"source": "loadtest keys"}
	}}
	pool := "default"
	if *kind == "keys" {
		ks, _, err := reg.Keystore(ctx, p)
		if err != nil {
			fmt.Fprintln(stderr, "loadtest keys: key store:", err)
			return 1
		}
		pool = ks.Pool
	}
	create := func(ctx context.Context, id string) error {
		switch *kind {
		case "keystores":
			return createKeystore(ctx, nc, reg, pool, id)
		case "tenants":
			return createTenant(ctx, tenants, pool, id)
		}
		return createKey(ctx, nc, reg, pool, p, id)
	}
	start := time.Now()
	next := atomic.Int64{}
	next.Store(int64(*from))
	var failed, created atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range *jobs {
		wg.Go(func() {
			for ctx.Err() == nil && failed.Load() == 0 {
				n := next.Add(1) - 1
				if n >= int64(*from+*count) {
					return
				}
				id := fmt.Sprintf("%s%d", *idPrefix, n)
				if err := create(ctx, id); err != nil {
					if ctx.Err() != nil {
						return // interrupted: reported below
					}
					failed.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				created.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		fmt.Fprintln(stderr, "loadtest keys:", firstErr)
		return 1
	}
	n := created.Load()
	if ctx.Err() != nil {
		// Interrupted (SIGINT): say how many exist, so a run can go on with them.
		fmt.Fprintf(stdout, "interrupted: created %d of %d %s (numbers below %d may have gaps) in %s\n", n, *count, *kind, *from+*count, time.Since(start).Round(time.Millisecond))
		return 0
	}
	fmt.Fprintf(stdout, "created %d %s in %s (%.0f/s)\n", n, *kind, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds())
	return 0
}

// createKey is `sovkeys xks key create --keystore prefix --id id` (usage
// encrypt,decrypt): the HSM key first, then its registry entry.
func createKey(ctx context.Context, nc *nats.Conn, reg *registry.Registry, pool, prefix, id string) error {
	label := "xks." + shared.ScopeToken(prefix) + "." + id
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var info kwadmin.KeyInfo
	if err := kwadmin.Call(cctx, nc, pool, kwadmin.EndpointKeyCreate, kwadmin.KeyRequest{Label: label, Encrypt: true, Decrypt: true}, &info); err != nil {
		return fmt.Errorf("hsm key %q: %w", label, err)
	}
	k := &registry.Key{Keystore: prefix, KeyID: id, Label: label, Status: registry.StatusEnabled, Created: time.Now().UTC()}
	if err := reg.CreateKey(cctx, k); err != nil && !errors.Is(err, registry.ErrExists) {
		return err
	}
	return nil
}

// createKeystore is `sovkeys xks keystore create --prefix id`: a SigV4
// credential sealed by the pool's keyworker, then the registry entry (the
// secret is not kept: these key stores exist to be counted).
func createKeystore(ctx context.Context, nc *nats.Conn, reg *registry.Registry, pool, prefix string) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cred, _, err := registry.MintCredential(cctx, registry.KWAdminSealer(nc), prefix, pool, time.Now())
	if err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	ks := &registry.Keystore{Prefix: prefix, Pool: pool, Created: time.Now().UTC(), Credentials: []registry.Credential{cred}}
	if err := reg.CreateKeystore(cctx, ks); err != nil && !errors.Is(err, registry.ErrExists) {
		return err
	}
	return nil
}

// createTenant is `sovkeys tenant create --id id` (mutual TLS, the EKT
// named after the tenant, made at its first generate-secret).
func createTenant(ctx context.Context, tenants *registry.Tenants, pool, id string) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tn := &registry.Tenant{ID: id, EKTName: id, Pool: pool, AuthMethods: []string{"mtls"},
		Status: registry.TenantEnabled, Created: time.Now().UTC()}
	if err := tenants.Create(cctx, tn); err != nil && !errors.Is(err, registry.ErrExists) {
		return err
	}
	return nil
}
