package main

import (
	"context"
	"crypto/rand"
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
	"github.com/sovkeys/sovkeys/shared/natsauth"
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

	// HSM: a SoftHSM token under dir, found by label.
	pins, err := loadOrCreatePINs(filepath.Join(dir, "hsm", "pins"))
	if err != nil {
		return err
	}
	tok, err := keyworker.EnsureSoftHSMToken(ctx, filepath.Join(dir, "hsm"), standaloneTokenLabel, pins.so, pins.user)
	if err != nil {
		return err
	}
	hsm, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{
		ModulePath: tok.ModulePath, TokenLabel: tok.TokenLabel, PIN: pins.user, Sessions: f.sessions, IVFromHSM: f.ivFromHSM,
	}, logger)
	if err != nil {
		return err
	}
	defer func() { _ = hsm.Close() }()

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

type hsmPINs struct{ so, user string }

// loadOrCreatePINs keeps the standalone token's PINs in a 0600 file. This is
// the development profile: production keyworkers get the PIN from the
// operator (SOVKEYS_HSM_PIN / --hsm-pin-file), see docs/operations.md.
func loadOrCreatePINs(path string) (hsmPINs, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		parts := strings.Fields(string(b))
		if len(parts) != 2 {
			return hsmPINs{}, fmt.Errorf("%s: malformed pin file", path)
		}
		return hsmPINs{so: parts[0], user: parts[1]}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return hsmPINs{}, err
	}
	p := hsmPINs{so: randomHex(16), user: randomHex(16)}
	if err := os.WriteFile(path, []byte(p.so+" "+p.user+"\n"), 0o600); err != nil {
		return hsmPINs{}, err
	}
	return p, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
