package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sovkeys/sovkeys/services/gateway"
	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/clusterinit"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// standaloneTokenLabel is the SoftHSM token label of a standalone node.
const standaloneTokenLabel = "sovkeys"

// standaloneFlags are standalone's own flags; it also takes every service's
// flags except those it sets itself (standaloneSets).
type standaloneFlags struct {
	svc                 serviceConfig
	dataDir, natsListen string
	natsCert, natsKey   string
	nShares             int
	devUnseal           string
	quorum              int
	tokenLabel          string // the SoftHSM token under --data (restored nodes: the imported one)
	soPINFile           string // the SO PIN of a new token (hsm export-keys needs it)
	validity            time.Duration
}

// standaloneAdmin is the person standalone makes at its first start, with
// every role (development; docs/operations.md, "Day one" for real teams).
const standaloneAdmin = "admin"

// standaloneSets are the service flags standalone decides itself: the
// embedded NATS server and its credentials, the SoftHSM token under --data.
func standaloneSets() map[string]bool {
	return map[string]bool{"nats": true, "creds": true, "hsm-module": true, "hsm-token-label": true, "hsm-pin-file": true}
}

func standaloneCommand() command {
	return define("standalone", "--data DIR [--listen 127.0.0.1:8443] [--nats-listen 127.0.0.1:4222]",
		"everything in one process: embedded NATS JetStream, a SoftHSM token and the four services (development, small sites)",
		groupService, registerStandalone, runStandalone)
}

func registerStandalone(fs *flag.FlagSet, getenv func(string) string, f *standaloneFlags) {
	// Every service's flags, registered on a scratch set and copied over
	// but for the ones standalone sets itself.
	all := flag.NewFlagSet("", flag.ContinueOnError)
	f.svc.common.register(all, getenv)
	for _, svc := range services() {
		svc.flags(all, getenv, &f.svc)
	}
	sets := standaloneSets()
	all.VisitAll(func(fl *flag.Flag) {
		if !sets[fl.Name] {
			fs.Var(fl.Value, fl.Name, fl.Usage)
		}
	})
	fs.StringVar(&f.dataDir, "data", "", "data directory (created if missing)")
	fs.StringVar(&f.natsListen, "nats-listen", "127.0.0.1:4222", "embedded NATS listen address")
	fs.StringVar(&f.natsCert, "nats-tls-cert", "", "serve NATS over TLS with this certificate (PEM); services then need --nats-ca")
	fs.StringVar(&f.natsKey, "nats-tls-key", "", "private key of --nats-tls-cert")
	fs.DurationVar(&f.validity, "validity", natsauth.DefaultValidity, "lifetime of the NATS credentials issued; renewed at start and while running when a third is left")
	fs.IntVar(&f.nShares, "unseal-shares", 3, "HSM PIN shares made when the token is created")
	fs.IntVar(&f.quorum, "quorum", 1, "people who must sign a destructive operation (key version destroy): 1 is for development only; a real team uses 2 (docs/security.md, \"Quorum\")")
	fs.StringVar(&f.tokenLabel, "hsm-token-label", standaloneTokenLabel, "label of the SoftHSM token under --data (a restored node: the token keys were imported into)")
	fs.StringVar(&f.soPINFile, "hsm-so-pin-file", "", "file holding the security officer's PIN for a new token (kept by the security officer; `sovkeys hsm export-keys` needs it); default: a random one, discarded")
	fs.StringVar(&f.devUnseal, "dev-unseal-file", "", "DEVELOPMENT ONLY: keep the unseal shares in this file (outside --data) and unseal from it at start; as unsafe as a PIN on disk")
}

// runStandalone runs an embedded NATS JetStream server, a SoftHSM token and
// all four services in one process. The services talk to each other only
// over NATS, with their own credentials, exactly as separate processes do.
func runStandalone(ctx context.Context, f *standaloneFlags, s stdio) error {
	if f.dataDir == "" {
		return fmt.Errorf("%w: --data is required", shared.ErrConfigValidation)
	}
	dir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return err
	}
	logger, err := newLogger(s.stderr, f.svc.common.logLevel)
	if err != nil {
		return err
	}
	startPprof(s.getenv("SOVKEYS_PPROF_LISTEN"), logger)
	stopMetrics, err := startMetrics(f.svc.common.metricsListen, logger)
	if err != nil {
		return err
	}
	defer stopMetrics()
	for _, sub := range []string{"", "nats", "trust", "creds", "hsm", "tls"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		return err
	}
	if err := trust.SetValidity(f.validity); err != nil {
		return fmt.Errorf("%w: --validity: %v", shared.ErrConfigValidation, err)
	}
	// People: the first admin, and the shared operator credential of
	// earlier versions revoked (before the server loads the account).
	if err := ensureStandalonePeople(trust, dir, s, logger); err != nil {
		return err
	}
	if f.quorum < 1 || f.quorum > 9 {
		return fmt.Errorf("%w: --quorum must be 1..9", shared.ErrConfigValidation)
	}
	if f.quorum == 1 {
		logger.Warn("quorum is 1: one person alone may destroy key versions (development only; --quorum 2 for a team)")
	}
	// Services' credentials before the server loads the account: a
	// renewed or upgraded (non-expiring) one's old key is revoked in it.
	credsOf, err := writeCreds(trust, dir, f.svc.pool, time.Now())
	if err != nil {
		return err
	}
	ns, err := startNATS(f, dir, trust)
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	f.svc.common.conn.url = ns.ClientURL()
	// The node's own services use the in-process pipe (no loopback socket
	// per message, docs/BENCHMARKS.md); operators and other processes use
	// the URL.
	f.svc.common.conn.inProcess = ns
	go renewCreds(ctx, trust, ns, dir, f.svc.pool, logger)
	if err := bootstrapMesh(ctx, f, dir, logger); err != nil {
		return err
	}
	if err := publishStandaloneRoster(ctx, f, dir, logger); err != nil {
		return err
	}
	hsm, err := openStandaloneHSM(ctx, f, dir, s.stdout, logger)
	if err != nil {
		return err
	}
	if hsm != nil {
		defer closeHSM(hsm, logger)
	}
	if f.svc.gateway.tlsCert == "" || f.svc.gateway.tlsKey == "" {
		d, err := gateway.EnsureDevTLS(filepath.Join(dir, "tls"), time.Now())
		if err != nil {
			return err
		}
		f.svc.gateway.tlsCert, f.svc.gateway.tlsKey = d.CertFile, d.KeyFile
	}
	return serveAll(ctx, f, dir, credsOf, hsm, s, logger)
}

// startNATS starts the embedded JetStream server: operator-signed accounts,
// one user per service.
func startNATS(f *standaloneFlags, dir string, trust *natsauth.Trust) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(f.natsListen)
	if err != nil {
		return nil, fmt.Errorf("%w: --nats-listen: %v", shared.ErrConfigValidation, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("%w: --nats-listen port: %v", shared.ErrConfigValidation, err)
	}
	opts := &server.Options{
		ServerName: "sovkeys-standalone", Host: host, Port: port,
		JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true,
		MaxPayload: 1 << 20,
		// User JWTs carry per-service permission lists: allow long CONNECTs.
		MaxControlLine: 64 << 10,
	}
	if err := trust.Configure(opts); err != nil {
		return nil, err
	}
	if f.natsCert != "" || f.natsKey != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: f.natsCert, KeyFile: f.natsKey})
		if err != nil {
			return nil, fmt.Errorf("%w: nats tls: %v", shared.ErrConfigValidation, err)
		}
		tc.MinVersion = tls.VersionTLS12
		opts.TLSConfig, opts.TLS = tc, true
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded nats: not ready after 30s")
	}
	return ns, nil
}

// writeCreds keeps (or issues, renews, re-issues with changed permissions,
// revoking the key replaced: clusterinit.EnsureCreds) the bootstrap
// identity's credentials (with the trust seeds: no running service holds
// it) and one user per service, each with only its own permissions; it
// returns the services' files and whether a key was replaced. People's
// credentials: ensureStandalonePeople.
func writeCreds(trust *natsauth.Trust, dir, pool string, now time.Time) (map[string]string, error) {
	accPub, _ := trust.AppAccountKey()
	if _, err := clusterinit.EnsureCreds(trust, accPub, bootstrapCreds(dir), shared.UserBootstrap, natsauth.BootstrapPermissions(), now); err != nil {
		return nil, err
	}
	credsOf := map[string]string{}
	for _, svc := range services() {
		p := filepath.Join(dir, "creds", svc.name+".creds")
		if _, err := clusterinit.EnsureCreds(trust, accPub, p, svc.name, natsauth.ServicePermissions(svc.name, []string{pool}), now); err != nil {
			return nil, err
		}
		credsOf[svc.name] = p
	}
	return credsOf, nil
}

// renewCreds renews the services' credentials while the node runs (a
// standalone node may run longer than their validity): hourly, a file due
// for renewal is re-issued, the old key revoked in the embedded server at
// once; the service, watching its file (mesh.WatchCreds), reconnects with
// the new one.
func renewCreds(ctx context.Context, trust *natsauth.Trust, ns *server.Server, dir, pool string, logger *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			_, before := trust.AppAccountKey()
			if _, err := writeCreds(trust, dir, pool, now); err != nil {
				logger.Error("renewing service credentials", "err", err)
				continue
			}
			if _, after := trust.AppAccountKey(); after != before {
				if err := trust.Apply(ns); err != nil {
					logger.Error("loading renewed credentials' revocations", "err", err)
				}
				logger.Info("service credentials renewed; the replaced keys are revoked")
			}
		}
	}
}

// bootstrapCreds is the bootstrap identity's creds file of a standalone node.
func bootstrapCreds(dir string) string { return filepath.Join(dir, "trust", "bootstrap.creds") }

// bootstrapMesh declares every stream and bucket with the final
// configuration, as `sovkeys init` does, before any service binds.
func bootstrapMesh(ctx context.Context, f *standaloneFlags, dir string, logger *slog.Logger) error {
	c := f.svc.common.conn
	c.creds = bootstrapCreds(dir)
	nc, js, err := mesh.Connect(ctx, c.config("sovkeys-init"), logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	return mesh.Bootstrap(ctx, js, f.svc.common.topo.t, []string{f.svc.pool})
}

// openStandaloneHSM makes (once) a SoftHSM token under dir and opens it, or
// returns nil when the node is sealed. Its PINs are never stored: the SO
// PIN is discarded after creation and the user PIN leaves only as Shamir
// shares printed once (docs/operations.md, "Unseal").
func openStandaloneHSM(ctx context.Context, f *standaloneFlags, dir string, stdout io.Writer, logger *slog.Logger) (*keyworker.HSM, error) {
	hsmDir := filepath.Join(dir, "hsm")
	fresh := !tokenDirUsed(filepath.Join(hsmDir, "tokens"))
	soPIN, err := randomHex(16)
	if err != nil {
		return nil, err
	}
	if f.soPINFile != "" {
		if soPIN, err = readSecretFile(f.soPINFile); err != nil {
			return nil, fmt.Errorf("--hsm-so-pin-file: %w", err)
		}
	}
	pin, err := randomHex(16)
	if err != nil {
		return nil, err
	}
	tok, err := keyworker.EnsureSoftHSMToken(ctx, hsmDir, cmp.Or(f.tokenLabel, standaloneTokenLabel), soPIN, pin)
	if err != nil {
		return nil, err
	}
	f.svc.keyworker.hsmModule, f.svc.keyworker.hsmToken = tok.ModulePath, tok.TokenLabel
	if fresh {
		shares, err := unseal.SplitPIN(pin, f.svc.pool, f.nShares, f.svc.keyworker.unsealThreshold)
		if err != nil {
			return nil, fmt.Errorf("%w: unseal shares: %v", shared.ErrConfigValidation, err)
		}
		printShares(stdout, shares, f.svc.keyworker.unsealThreshold)
		if f.devUnseal != "" {
			if err := writeDevShares(f.devUnseal, dir, shares); err != nil {
				return nil, err
			}
		}
	} else {
		pin = ""
		if f.devUnseal != "" {
			if pin, err = readDevShares(f.devUnseal); err != nil {
				return nil, err
			}
		}
	}
	if pin == "" {
		fmt.Fprintf(stdout, "HSM sealed: the keyworker logs its key fingerprint; run `sovkeys unseal --keyworker-key FINGERPRINT --share SHARE` with %d shares to start it\n", f.svc.keyworker.unsealThreshold)
		return nil, nil
	}
	return openHSM(ctx, &f.svc, pin, logger)
}

// serveAll runs the four services, each with its own NATS user, until ctx
// ends or one of them fails.
func serveAll(ctx context.Context, f *standaloneFlags, dir string, credsOf map[string]string, hsm *keyworker.HSM, s stdio, logger *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	svcs := services()
	errc := make(chan error, len(svcs))
	for _, svc := range svcs {
		c := f.svc
		c.common.conn.creds = credsOf[svc.name]
		var h *keyworker.HSM
		if svc.opensHSM {
			h = hsm
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runService(ctx, svc, &c, h, s.getenv, logger.With("node", "standalone")); err != nil {
				errc <- err
			}
		}()
	}
	natsURL, opCreds, listen := f.svc.common.conn.url, clusterinit.PersonCredsFile(dir, standaloneAdmin), f.svc.gateway.listen
	fmt.Fprintf(s.stdout, `sovkeys standalone
  gateway     https://%s  (trust anchor %s)
  readiness   https://%s/healthz
  nats        %s  (admin credentials %s)
  try:        export SOVKEYS_NATS_URL=%s SOVKEYS_NATS_CREDS=%s
              sovkeys xks keystore create --prefix /example
`, listen, filepath.Join(dir, "tls", "ca.pem"), listen, natsURL, opCreds, natsURL, opCreds)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		logger.Error("service stopped; shutting down", "err", runErr)
	}
	cancel()
	wg.Wait()
	return runErr
}

// tokenDirUsed reports whether SoftHSM has stored a token under dir.
func tokenDirUsed(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

func printShares(w io.Writer, shares []unseal.Share, k int) {
	fmt.Fprintf(w, "HSM unseal shares: %d of %d are needed after every restart. Shown ONCE; give them to different people:\n", k, len(shares))
	for _, s := range shares {
		fmt.Fprintf(w, "  %s\n", s.Encode())
	}
}

// writeDevShares keeps the shares in a file for unattended development
// restarts; refused inside the data dir so a copy of the data never
// carries its own unseal material.
func writeDevShares(path, dataDir string, shares []unseal.Share) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if rel, err := filepath.Rel(dataDir, abs); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%w: --dev-unseal-file must be outside --data", shared.ErrConfigValidation)
	}
	var b strings.Builder
	for _, s := range shares {
		b.WriteString(s.Encode() + "\n")
	}
	return os.WriteFile(abs, []byte(b.String()), 0o600)
}

// readDevShares rebuilds the PIN from the dev file's shares (v2 lines, or
// v1 lines written by earlier releases), checking a v2 split's check value
// before the PIN reaches C_Login.
func readDevShares(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--dev-unseal-file: %w", err)
	}
	var shares []unseal.Share
	for _, line := range strings.Fields(string(b)) {
		s, err := unseal.Parse(line)
		if err != nil {
			return "", fmt.Errorf("--dev-unseal-file: %w", err)
		}
		shares = append(shares, s)
	}
	pin, err := unseal.Combine(shares)
	if err != nil {
		return "", fmt.Errorf("--dev-unseal-file: %w", err)
	}
	defer clear(pin)
	return string(pin), nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ensureStandalonePeople makes the first admin (every role) at the first
// start, keeps the roster file's people current, and revokes the shared
// operator credential an earlier version wrote.
func ensureStandalonePeople(trust *natsauth.Trust, dir string, s stdio, logger *slog.Logger) error {
	now := time.Now()
	if revoked, err := clusterinit.RevokeLegacyOperator(trust, dir, now); err != nil {
		return err
	} else if revoked {
		logger.Warn("the shared operator credential of an earlier version was revoked and deleted; use your own credential",
			"admin_creds", clusterinit.PersonCredsFile(dir, standaloneAdmin))
	}
	path := filepath.Join(dir, "trust", clusterinit.RosterFile)
	entries, err := clusterinit.ReadRoster(path)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		entries = []clusterinit.RosterEntry{{Name: standaloneAdmin, Roles: natsauth.Roles()}}
		fmt.Fprintf(s.stdout, "first start: person %q made with every role (admin, security, custodian, auditor) for development: %s\n",
			standaloneAdmin, clusterinit.PersonCredsFile(dir, standaloneAdmin))
	}
	for i, e := range entries {
		// Credentials are re-issued only when their permissions changed
		// (an upgrade); the roster follows their keys.
		if entries[i], _, err = clusterinit.EnsurePerson(trust, dir, clusterinit.PersonSpec{Name: e.Name, Roles: e.Roles}, now); err != nil {
			return err
		}
	}
	return clusterinit.WriteRoster(path, entries)
}

// publishStandaloneRoster writes the roster and the quorum policy into the
// roster bucket with the bootstrap identity.
func publishStandaloneRoster(ctx context.Context, f *standaloneFlags, dir string, logger *slog.Logger) error {
	c := f.svc.common.conn
	c.creds = bootstrapCreds(dir)
	nc, js, err := mesh.Connect(ctx, c.config("sovkeys-roster"), logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	pol := roster.UniformPolicy(f.quorum)
	if _, err = publishRoster(ctx, js, filepath.Join(dir, "trust", clusterinit.RosterFile), &pol); err != nil {
		return err
	}
	// authn's work key, made at the first start of this version (workkeys.go).
	pub, err := ensureStandaloneWorkKey(dir)
	if err != nil {
		return err
	}
	return pinWorkKeys(ctx, js, []string{pub}, nil)
}
