package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// auditCmdFlags are the flags of the audit log commands.
type auditCmdFlags struct {
	conn                                     connFlags
	scope                                    scopeFlags
	keyFile, from, pool, out                 string
	s3Endpoint, s3Region, s3Bucket, s3Prefix string
	s3PathStyle, allowTail, asJSON           bool
	timeout                                  time.Duration
}

func auditCommands() []command {
	return []command{
		define("audit verify-v1", "--tenant T | --keystore PREFIX | --operator [--public-key FILE.pem] [--from nats|objects | --s3-bucket B] [--json]",
			"verify a version-1 log (hash chain, per-record objects); `audit verify --v1` runs this", groupOperator,
			func(fs *flag.FlagSet, getenv func(string) string, f *auditCmdFlags) {
				f.conn.register(fs, getenv)
				f.scope.register(fs)
				fs.StringVar(&f.keyFile, "public-key", "", "audit public key, PEM (from `sovkeys audit public-key` or GET /v1/audit-public-key)")
				fs.StringVar(&f.from, "from", "", "nats (the log stream) | objects (the JetStream export) | s3; default s3 when --s3-bucket is set, else nats")
				fs.StringVar(&f.pool, "pool", "default", "with NATS and no --public-key: the pool whose published audit key to use")
				fs.StringVar(&f.s3Endpoint, "s3-endpoint", getenv("SOVKEYS_S3_ENDPOINT"), "S3 endpoint URL (env SOVKEYS_S3_ENDPOINT; empty: AWS)")
				fs.StringVar(&f.s3Region, "s3-region", envOr(getenv, "SOVKEYS_S3_REGION", "us-east-1"), "S3 region (env SOVKEYS_S3_REGION)")
				fs.StringVar(&f.s3Bucket, "s3-bucket", "", "verify the export in this bucket")
				fs.StringVar(&f.s3Prefix, "s3-prefix", audit.DefaultPrefix, "key prefix of the export in the bucket")
				fs.BoolVar(&f.s3PathStyle, "s3-path-style", true, "path-style S3 addressing")
				fs.BoolVar(&f.allowTail, "allow-unsigned-tail", false, "accept records newer than the newest checkpoint")
				fs.BoolVar(&f.asJSON, "json", false, "print the report as JSON")
				fs.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
			}, auditVerify),
		define("audit checkpoint", "--tenant T | --keystore PREFIX | --operator", "ask the audit service to sign a checkpoint now; prints it as stored (cosignatures included), a signed note to keep for audit verify --checkpoint", groupOperator,
			func(fs *flag.FlagSet, getenv func(string) string, f *auditCmdFlags) {
				f.conn.register(fs, getenv)
				f.scope.register(fs)
			}, auditCheckpoint),
		define("audit public-key", "[--pool default] [--out FILE.pem]", "print a pool's audit public key (PEM)", groupOperator,
			func(fs *flag.FlagSet, getenv func(string) string, f *auditCmdFlags) {
				f.conn.register(fs, getenv)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool holding the audit key")
				fs.StringVar(&f.out, "out", "", "write the PEM here instead of stdout")
			}, auditPublicKey),
	}
}

// scopeFlags select one log.
type scopeFlags struct {
	tenant, keystore string
	operator         bool
}

func (s *scopeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.tenant, "tenant", "", "the tenant's log")
	fs.StringVar(&s.keystore, "keystore", "", "the XKS key store's log (URI prefix, e.g. /example)")
	fs.BoolVar(&s.operator, "operator", false, "the operator (control-plane) log")
}

func (s *scopeFlags) scope() (auditlog.Scope, error) {
	n := 0
	var sc auditlog.Scope
	if s.tenant != "" {
		n, sc = n+1, auditlog.Scope{Kind: shared.AuditKindTenant, ID: s.tenant}
	}
	if s.keystore != "" {
		// Stored prefixes have no leading or trailing "/" (as `xks keystore create`).
		n, sc = n+1, auditlog.Scope{Kind: shared.AuditKindXKS, ID: strings.Trim(s.keystore, "/")}
	}
	if s.operator {
		n, sc = n+1, auditlog.Scope{Kind: shared.AuditKindOperator}
	}
	if n != 1 {
		return sc, fmt.Errorf("exactly one of --tenant, --keystore, --operator: %w", errUsage)
	}
	return sc, nil
}

func auditVerify(ctx context.Context, f *auditCmdFlags, s stdio) error {
	sc, err := f.scope.scope()
	if err != nil {
		return err
	}
	if f.from == "" {
		f.from = "nats"
		if f.s3Bucket != "" {
			f.from = "s3"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var pub *ecdsa.PublicKey
	if f.keyFile != "" {
		data, err := os.ReadFile(f.keyFile)
		if err != nil {
			return fmt.Errorf("audit public key: %w", err)
		}
		if pub, err = auditlog.ParsePublicKey(data); err != nil {
			return err
		}
	}
	var src auditlog.Source
	switch f.from {
	case "s3":
		if pub == nil {
			return fmt.Errorf("%w: verifying a bucket needs --public-key", shared.ErrConfigValidation)
		}
		b, err := auditlog.NewS3Bucket(ctx, writeonce.S3Config{
			Endpoint: f.s3Endpoint, Region: f.s3Region, Bucket: f.s3Bucket, Prefix: f.s3Prefix, UsePathStyle: f.s3PathStyle,
			AccessKeyID: s.getenv("SOVKEYS_S3_ACCESS_KEY_ID"), SecretAccessKey: s.getenv("SOVKEYS_S3_SECRET_ACCESS_KEY"),
		})
		if err != nil {
			return err
		}
		src = auditlog.BucketSource{Bucket: b}
	case "nats", "objects":
		nc, js, err := connectCLI(ctx, f.conn, s.stderr)
		if err != nil {
			return err
		}
		defer nc.Close()
		if pub == nil {
			spki, err := publishedAuditKey(ctx, nc, js, f.pool)
			if err != nil {
				return err
			}
			if pub, err = auditlog.ParsePublicKey(spki); err != nil {
				return err
			}
			fmt.Fprintf(s.stderr, "using the audit key published for pool %s (sha256 %s); pass --public-key to check against a key you hold\n",
				f.pool, auditlog.KeyID(spki))
		}
		src = auditlog.StreamSource{JS: js}
		if f.from == "objects" {
			b, err := auditlog.OpenObjectBucket(ctx, js)
			if err != nil {
				return err
			}
			src = auditlog.BucketSource{Bucket: b}
		}
	default:
		return fmt.Errorf("--from %q: want nats, objects or s3: %w", f.from, errUsage)
	}
	rep, err := auditlog.Verify(ctx, src, sc, pub, auditlog.Options{AllowUnsignedTail: f.allowTail})
	if err != nil {
		return err
	}
	if f.asJSON {
		enc := json.NewEncoder(s.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(s.stdout, "verified %s from %s: records %d..%d gapless, hash-chained and signed (%d checkpoints, newest signed %s, head %s)\n",
		sc, rep.Source, rep.First, rep.Last, rep.Checkpoints, rep.SignedAt, rep.Head)
	if rep.UnsignedTail > 0 {
		fmt.Fprintf(s.stdout, "not yet covered by a checkpoint: records %d..%d\n", rep.Last+1, rep.Last+rep.UnsignedTail)
	}
	return nil
}

// publishedAuditKey reads a pool's audit public key from KV, asking the
// pool to create and publish it if it is not there yet.
func publishedAuditKey(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, pool string) ([]byte, error) {
	kv, err := js.KeyValue(ctx, shared.BucketPKI)
	if err == nil {
		e, err := kv.Get(ctx, auditlog.PKIKey(pool))
		if err == nil {
			return e.Value(), nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("audit public key: %w", err)
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	var resp auditlog.PublicKeyResponse
	if err := kwadmin.Call(ctx, nc, pool, auditlog.EndpointPublicKey, struct{}{}, &resp); err != nil {
		return nil, fmt.Errorf("audit public key of pool %q: %w", pool, err)
	}
	return resp.PublicKey, nil
}

func auditPublicKey(ctx context.Context, f *auditCmdFlags, s stdio) error {
	ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
	defer cancel()
	nc, js, err := connectCLI(ctx, f.conn, s.stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	spki, err := publishedAuditKey(ctx, nc, js, f.pool)
	if err != nil {
		return err
	}
	pemBytes := auditlog.PublicKeyPEM(spki)
	if f.out == "" {
		_, err := s.stdout.Write(pemBytes)
		return err
	}
	return os.WriteFile(f.out, pemBytes, 0o644)
}

func auditCheckpoint(ctx context.Context, f *auditCmdFlags, s stdio) error {
	sc, err := f.scope.scope()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
	defer cancel()
	nc, _, err := connectCLI(ctx, f.conn, s.stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	req, err := json.Marshal(auditlog.CheckpointRequest{Kind: sc.Kind, Scope: sc.ID})
	if err != nil {
		return err
	}
	m, err := nc.RequestWithContext(ctx, auditlog.SubjectControlPrefix+"."+auditlog.EndpointCheckpoint, req)
	if errors.Is(err, nats.ErrNoResponders) {
		return errors.New("audit checkpoint: no audit service is running")
	}
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return fmt.Errorf("audit checkpoint: %s", m.Header.Get(micro.ErrorHeader))
	}
	// The signed note as stored: it ends with its own newline, and one
	// byte more would make it no signed note at all (C2SP signed-note).
	_, err = s.stdout.Write(m.Data)
	return err
}
