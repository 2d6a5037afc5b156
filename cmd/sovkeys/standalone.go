package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
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
	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// standaloneTokenLabel is the SoftHSM token label of a standalone node.
const standaloneTokenLabel = "sovkeys"

// runStandalone runs an embedded NATS JetStream server, a SoftHSM token and
// all four services in one process. The services talk to each other only
// over NATS, with their own credentials, exactly as separate processes do.
func runStandalone(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("standalone", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serviceFlags
	f.register(fs, getenv)
	dataDir := fs.String("data", "", "data directory (created if missing)")
	natsListen := fs.String("nats-listen", "127.0.0.1:4222", "embedded NATS listen address")
	natsCert := fs.String("nats-tls-cert", "", "serve NATS over TLS with this certificate (PEM); services then need --nats-ca")
	natsKey := fs.String("nats-tls-key", "", "private key of --nats-tls-cert")
	nShares := fs.Int("unseal-shares", 3, "HSM PIN shares made when the token is created")
	kShares := fs.Int("unseal-threshold", 2, "shares needed to unseal after a restart")
	metricsListen := fs.String("metrics-listen", getenv("SOVKEYS_METRICS_LISTEN"), metricsFlagUsage)
	devUnseal := fs.String("dev-unseal-file", "", "DEVELOPMENT ONLY: keep the unseal shares in this file (outside --data) and unseal from it at start; as unsafe as a PIN on disk")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" {
		return fmt.Errorf("%w: --data is required", shared.ErrConfigValidation)
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	startPprof(getenv("SOVKEYS_PPROF_LISTEN"), logger)
	stopMetrics, err := startMetrics(*metricsListen, logger)
	if err != nil {
		return err
	}
	defer stopMetrics()
	for _, sub := range []string{"", "nats", "trust", "creds", "hsm", "tls"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}

	// NATS: operator-signed accounts, one user per service.
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(*natsListen)
	if err != nil {
		return fmt.Errorf("%w: --nats-listen: %v", shared.ErrConfigValidation, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("%w: --nats-listen port: %v", shared.ErrConfigValidation, err)
	}
	opts := &server.Options{
		ServerName: "sovkeys-standalone", Host: host, Port: port,
		JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true,
		MaxPayload: 1 << 20,
		// User JWTs carry per-service permission lists: allow long CONNECTs.
		MaxControlLine: 64 << 10,
	}
	if err := trust.Configure(opts); err != nil {
		return err
	}
	if *natsCert != "" || *natsKey != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: *natsCert, KeyFile: *natsKey})
		if err != nil {
			return fmt.Errorf("%w: nats tls: %v", shared.ErrConfigValidation, err)
		}
		tc.MinVersion = tls.VersionTLS12
		opts.TLSConfig, opts.TLS = tc, true
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("embedded nats: not ready after 30s")
	}
	natsURL := ns.ClientURL()
	f.conn.url = natsURL
	if err := trust.WriteUserCreds(filepath.Join(dir, "operator.creds"), "operator", natsauth.Permissions{}); err != nil {
		return err
	}
	credsOf := map[string]string{}
	for _, name := range []string{"gateway", "authn", "keyworker", "audit"} {
		p := filepath.Join(dir, "creds", name+".creds")
		if err := trust.WriteUserCreds(p, name, natsauth.ServicePermissions(name, []string{f.pool})); err != nil {
			return err
		}
		credsOf[name] = p
	}

	// HSM: a SoftHSM token under dir, found by label. Its PINs are never
	// stored: the SO PIN is discarded after creation and the user PIN leaves
	// only as Shamir shares printed once (docs/operations.md, "Unseal").
	hsmDir := filepath.Join(dir, "hsm")
	fresh := !tokenDirUsed(filepath.Join(hsmDir, "tokens"))
	pin := randomHex(16)
	tok, err := keyworker.EnsureSoftHSMToken(ctx, hsmDir, standaloneTokenLabel, randomHex(16), pin)
	if err != nil {
		return err
	}
	f.hsmModule, f.hsmToken = tok.ModulePath, tok.TokenLabel
	if fresh {
		shares, err := unseal.SplitPIN(pin, f.pool, *nShares, *kShares)
		if err != nil {
			return fmt.Errorf("%w: unseal shares: %v", shared.ErrConfigValidation, err)
		}
		printShares(stdout, shares, *kShares)
		if *devUnseal != "" {
			if err := writeDevShares(*devUnseal, dir, shares); err != nil {
				return err
			}
		}
	} else {
		pin = ""
		if *devUnseal != "" {
			if pin, err = readDevShares(*devUnseal); err != nil {
				return err
			}
		}
	}
	var hsm *keyworker.HSM
	if pin != "" {
		if hsm, err = keyworker.OpenHSM(ctx, f.hsmConfig(pin), logger); err != nil {
			return err
		}
		defer func() { _ = hsm.Close() }()
	} else {
		fmt.Fprintf(stdout, "HSM sealed: run `sovkeys unseal --share SHARE` with %d shares to start the keyworker\n", *kShares)
	}

	// TLS for the gateway.
	if f.tlsCert == "" || f.tlsKey == "" {
		d, err := gateway.EnsureDevTLS(filepath.Join(dir, "tls"), time.Now())
		if err != nil {
			return err
		}
		f.tlsCert, f.tlsKey = d.CertFile, d.KeyFile
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, name := range []string{"keyworker", "audit", "authn", "gateway"} {
		sf := f
		sf.conn.creds = credsOf[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h *keyworker.HSM
			if name == "keyworker" {
				h = hsm
			}
			if err := startService(ctx, name, &sf, h, getenv, logger.With("node", "standalone")); err != nil {
				errc <- err
			}
		}()
	}
	fmt.Fprintf(stdout, `sovkeys standalone
  gateway     https://%s  (trust anchor %s)
  readiness   https://%s/healthz
  nats        %s  (operator credentials %s)
  try:        export SOVKEYS_NATS_URL=%s SOVKEYS_NATS_CREDS=%s
              sovkeys xks keystore create --prefix /example
`, f.listen, filepath.Join(dir, "tls", "ca.pem"), f.listen, natsURL, filepath.Join(dir, "operator.creds"),
		natsURL, filepath.Join(dir, "operator.creds"))
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

func readDevShares(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--dev-unseal-file: %w", err)
	}
	var parts []shamir.Share
	for _, line := range strings.Fields(string(b)) {
		s, err := unseal.Parse(line)
		if err != nil {
			return "", err
		}
		parts = append(parts, s.Share)
	}
	pin, err := shamir.Combine(parts)
	if err != nil {
		return "", err
	}
	return string(pin), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
