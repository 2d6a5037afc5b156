package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog/witness"
)

// runWitness is `sovkeys witness`: a C2SP tlog-witness for one
// deployment's audit logs (shared/infra/auditlog/witness does the work).
func runWitness(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var listen, stateDir, name, keyFile, deployment, logKeyFile, level string
	var printKey bool
	fs := flag.NewFlagSet("witness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&listen, "listen", envOr(getenv, "SOVKEYS_WITNESS_LISTEN", "127.0.0.1:7380"), "HTTP address (POST /add-checkpoint)")
	fs.StringVar(&stateDir, "state", getenv("SOVKEYS_WITNESS_STATE"), "directory of the last cosigned checkpoint per log")
	fs.StringVar(&name, "name", getenv("SOVKEYS_WITNESS_NAME"), "cosigner name, a schema-less URL (witness.example/w1)")
	fs.StringVar(&keyFile, "key-file", getenv("SOVKEYS_WITNESS_KEY_FILE"), "Ed25519 seed (32 bytes); created if missing")
	fs.StringVar(&deployment, "deployment", envOr(getenv, "SOVKEYS_AUDIT_DEPLOYMENT", audit.DefaultDeployment), "the deployment whose audit logs are witnessed")
	fs.StringVar(&logKeyFile, "log-key", getenv("SOVKEYS_WITNESS_LOG_KEY"), "the deployment's audit public key, PEM")
	fs.StringVar(&level, "log-level", "info", "debug | info | warn | error")
	fs.BoolVar(&printKey, "print-key", false, "print the witness key verifiers configure (--witness) and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	key, err := witnessKey(keyFile)
	if err != nil {
		return err
	}
	if printKey {
		_, err := fmt.Fprintln(stdout, auditlog.CosignerVKey(name, key.Public().(ed25519.PublicKey)))
		return err
	}
	pem, err := os.ReadFile(logKeyFile)
	if err != nil {
		return fmt.Errorf("witness: --log-key: %w", err)
	}
	logKey, err := auditlog.ParsePublicKey(pem)
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, level)
	if err != nil {
		return err
	}
	w, err := witness.New(witness.Config{Name: name, Key: key, Deployment: deployment, LogKey: logKey, StateDir: stateDir}, logger, time.Now)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	logger.Info("witness ready", "addr", ln.Addr().String(), "deployment", deployment, "key", w.VKey())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// witnessKey reads the Ed25519 seed, creating it (mode 0600) if missing.
func witnessKey(file string) (ed25519.PrivateKey, error) {
	if file == "" {
		return nil, fmt.Errorf("witness: --key-file: %w", errUsage)
	}
	seed, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		seed = make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("witness: key: %w", err)
		}
		_, err = f.Write(seed)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("witness: key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("witness: key: %w", err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("witness: key file holds %d bytes, want a %d-byte Ed25519 seed", len(seed), ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
