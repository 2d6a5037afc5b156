package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Audit operator commands:
//
//	sovkeys audit verify     --tenant T | --keystore P | --operator  [--public-key F] [--s3-bucket B ...] [--from nats|objects|s3]
//	sovkeys audit checkpoint --tenant T | --keystore P | --operator
//	sovkeys audit public-key [--pool default] [--out F]
//	sovkeys audit bench      [--events N] [--scopes S] [--rate R]
//
// `sovkeys audit` with anything else runs the audit service.
const auditUsage = `Audit log commands (NATS: --nats/--creds or SOVKEYS_NATS_URL/SOVKEYS_NATS_CREDS):
  sovkeys audit verify --tenant T | --keystore PREFIX | --operator [--public-key FILE.pem] [--allow-unsigned-tail] [--json]
        from NATS (default: the log stream; --from objects: the JetStream export),
        or from a bucket: --s3-bucket B [--s3-endpoint URL] [--s3-region R] [--s3-prefix audit/]
        (S3 credentials from SOVKEYS_S3_ACCESS_KEY_ID/SOVKEYS_S3_SECRET_ACCESS_KEY or the AWS default chain)
  sovkeys audit prove --tenant T | --keystore PREFIX | --operator --seq N [bucket flags] [--public-key FILE.pem]
        (verify: the transparency log; --first/--last, --checkpoint FILE, --proof FILE, --witness KEY --quorum K; --v1: the hash chain)
  sovkeys audit checkpoint --tenant T | --keystore PREFIX | --operator
  sovkeys audit public-key [--pool default] [--out FILE.pem]
  sovkeys audit bench [--events 100000] [--scopes 20] [--rate 0]
`

// isAuditCommand reports whether `sovkeys audit <arg>` is an operator
// command rather than the audit service.
func isAuditCommand(arg string) bool {
	switch arg {
	case "verify", "prove", "checkpoint", "public-key", "bench", "help":
		return true
	}
	return false
}

// runAuditCommand runs `sovkeys audit <command> ...`.
func runAuditCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	switch args[0] {
	case "verify":
		return auditTlogVerify(ctx, args[1:], stdout, stderr, getenv)
	case "prove":
		return auditProve(ctx, args[1:], stdout, stderr, getenv)
	case "checkpoint":
		return auditCheckpoint(ctx, args[1:], getenv, stdout, stderr)
	case "public-key":
		return auditPublicKey(ctx, args[1:], getenv, stdout, stderr)
	case "bench":
		return auditBench(ctx, args[1:], getenv, stdout, stderr)
	}
	fmt.Fprint(stderr, auditUsage)
	return errUsage
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

// parseAudit parses a command's flags (no positional arguments).
func parseAudit(name string, args []string, stderr io.Writer, define func(*flag.FlagSet)) error {
	fs := flag.NewFlagSet("audit "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	return nil
}

func connectCLI(ctx context.Context, conn connFlags, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return mesh.Connect(ctx, conn.config("sovkeys-cli"), logger)
}

func auditVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var (
		conn                                     connFlags
		sf                                       scopeFlags
		keyFile, from, pool                      string
		s3Endpoint, s3Region, s3Bucket, s3Prefix string
		s3PathStyle, allowTail, asJSON           bool
		timeout                                  time.Duration
	)
	err := parseAudit("verify", args, stderr, func(fs *flag.FlagSet) {
		conn.register(fs, getenv)
		sf.register(fs)
		fs.StringVar(&keyFile, "public-key", "", "audit public key, PEM (from `sovkeys audit public-key` or GET /v1/audit-public-key)")
		fs.StringVar(&from, "from", "", "nats (the log stream) | objects (the JetStream export) | s3; default s3 when --s3-bucket is set, else nats")
		fs.StringVar(&pool, "pool", "default", "with NATS and no --public-key: the pool whose published audit key to use")
		fs.StringVar(&s3Endpoint, "s3-endpoint", getenv("SOVKEYS_S3_ENDPOINT"), "S3 endpoint URL (empty: AWS)")
		fs.StringVar(&s3Region, "s3-region", envOr(getenv, "SOVKEYS_S3_REGION", "us-east-1"), "S3 region")
		fs.StringVar(&s3Bucket, "s3-bucket", "", "verify the export in this bucket")
		fs.StringVar(&s3Prefix, "s3-prefix", audit.DefaultPrefix, "key prefix of the export in the bucket")
		fs.BoolVar(&s3PathStyle, "s3-path-style", true, "path-style S3 addressing")
		fs.BoolVar(&allowTail, "allow-unsigned-tail", false, "accept records newer than the newest checkpoint")
		fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
		fs.DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	})
	if err != nil {
		return err
	}
	sc, err := sf.scope()
	if err != nil {
		return err
	}
	if from == "" {
		from = "nats"
		if s3Bucket != "" {
			from = "s3"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var pub *ecdsa.PublicKey
	if keyFile != "" {
		data, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("audit public key: %w", err)
		}
		if pub, err = auditlog.ParsePublicKey(data); err != nil {
			return err
		}
	}
	var src auditlog.Source
	switch from {
	case "s3":
		if pub == nil {
			return fmt.Errorf("%w: verifying a bucket needs --public-key", shared.ErrConfigValidation)
		}
		b, err := auditlog.NewS3Bucket(ctx, writeonce.S3Config{
			Endpoint: s3Endpoint, Region: s3Region, Bucket: s3Bucket, Prefix: s3Prefix, UsePathStyle: s3PathStyle,
			AccessKeyID: getenv("SOVKEYS_S3_ACCESS_KEY_ID"), SecretAccessKey: getenv("SOVKEYS_S3_SECRET_ACCESS_KEY"),
		})
		if err != nil {
			return err
		}
		src = auditlog.BucketSource{Bucket: b}
	case "nats", "objects":
		nc, js, err := connectCLI(ctx, conn, stderr)
		if err != nil {
			return err
		}
		defer nc.Close()
		if pub == nil {
			spki, err := publishedAuditKey(ctx, nc, js, pool)
			if err != nil {
				return err
			}
			if pub, err = auditlog.ParsePublicKey(spki); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "using the audit key published for pool %s (sha256 %s); pass --public-key to check against a key you hold\n",
				pool, auditlog.KeyID(spki))
		}
		src = auditlog.StreamSource{JS: js}
		if from == "objects" {
			b, err := auditlog.OpenObjectBucket(ctx, js)
			if err != nil {
				return err
			}
			src = auditlog.BucketSource{Bucket: b}
		}
	default:
		return fmt.Errorf("--from %q: want nats, objects or s3: %w", from, errUsage)
	}
	rep, err := auditlog.Verify(ctx, src, sc, pub, auditlog.Options{AllowUnsignedTail: allowTail})
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "verified %s from %s: records %d..%d gapless, hash-chained and signed (%d checkpoints, newest signed %s, head %s)\n",
		sc, rep.Source, rep.First, rep.Last, rep.Checkpoints, rep.SignedAt, rep.Head)
	if rep.UnsignedTail > 0 {
		fmt.Fprintf(stdout, "not yet covered by a checkpoint: records %d..%d\n", rep.Last+1, rep.Last+rep.UnsignedTail)
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

func auditPublicKey(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var conn connFlags
	var pool, out string
	if err := parseAudit("public-key", args, stderr, func(fs *flag.FlagSet) {
		conn.register(fs, getenv)
		fs.StringVar(&pool, "pool", "default", "keyworker pool holding the audit key")
		fs.StringVar(&out, "out", "", "write the PEM here instead of stdout")
	}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, js, err := connectCLI(ctx, conn, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	spki, err := publishedAuditKey(ctx, nc, js, pool)
	if err != nil {
		return err
	}
	pemBytes := auditlog.PublicKeyPEM(spki)
	if out == "" {
		_, err := stdout.Write(pemBytes)
		return err
	}
	return os.WriteFile(out, pemBytes, 0o644)
}

func auditCheckpoint(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var conn connFlags
	var sf scopeFlags
	if err := parseAudit("checkpoint", args, stderr, func(fs *flag.FlagSet) {
		conn.register(fs, getenv)
		sf.register(fs)
	}); err != nil {
		return err
	}
	sc, err := sf.scope()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, _, err := connectCLI(ctx, conn, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	req, _ := json.Marshal(auditlog.CheckpointRequest{Kind: sc.Kind, Scope: sc.ID})
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
	_, err = fmt.Fprintf(stdout, "%s\n", m.Data)
	return err
}

func auditBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var conn connFlags
	var cfg audit.LoadConfig
	if err := parseAudit("bench", args, stderr, func(fs *flag.FlagSet) {
		conn.register(fs, getenv)
		fs.IntVar(&cfg.Events, "events", 100000, "audit events to publish")
		fs.IntVar(&cfg.Scopes, "scopes", 20, "distinct key stores the events are spread over")
		fs.IntVar(&cfg.Rate, "rate", 0, "events/s offered (0: as fast as possible)")
		fs.DurationVar(&cfg.Wait, "wait", 5*time.Minute, "how long to wait for sequencing and export")
	}); err != nil {
		return err
	}
	nc, js, err := connectCLI(ctx, conn, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := audit.RunLoad(ctx, js, cfg, time.Now)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// auditFlags are the audit service's own settings, part of serviceFlags.
type auditFlags struct {
	store, bucket, prefix, signPool string
	tenantExport                    bool
	deployment                      string
	witnesses                       multiFlag
}

func (a *auditFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.store, "audit-store", audit.BackendJetStream, "audit: central export: jetstream (object store) | s3 (uses --s3-endpoint/--s3-region and SOVKEYS_S3_* credentials)")
	fs.StringVar(&a.bucket, "audit-s3-bucket", "", "audit: central S3 bucket (with --audit-store s3)")
	fs.StringVar(&a.prefix, "audit-s3-prefix", audit.DefaultPrefix, "audit: key prefix in S3 buckets (central and tenants')")
	fs.StringVar(&a.signPool, "audit-sign-pool", "default", "audit: keyworker pool whose HSM signs checkpoints")
	fs.StringVar(&a.deployment, "audit-deployment", audit.DefaultDeployment, "audit: deployment name in every checkpoint's origin line (verifiers need it)")
	fs.Var(&a.witnesses, "audit-witness", "audit: URL of a C2SP tlog-witness to cosign checkpoints (`sovkeys witness`); repeatable")
	fs.BoolVar(&a.tenantExport, "audit-tenant-export", false, "audit: also export to each tenant's own bucket (tenant --audit-bucket) through the same S3 endpoint")
}

// config builds the audit service configuration from the shared service
// flags (topology, S3 endpoint and credentials) and the audit flags.
func (a *auditFlags) config(f *serviceFlags) audit.Config {
	s3cfg := writeonce.S3Config{
		Endpoint: f.s3Endpoint, Region: f.s3Region, Prefix: a.prefix, UsePathStyle: f.s3PathStyle,
		AccessKeyID: f.s3AccessKeyID, SecretAccessKey: f.s3SecretAccessKey,
	}
	central := s3cfg
	central.Bucket = a.bucket
	return audit.Config{
		Topology: f.topo.t, SignPool: a.signPool,
		Central:      audit.CentralConfig{Backend: a.store, S3: central},
		TenantExport: audit.TenantExportConfig{Enabled: a.tenantExport, S3: s3cfg},
		Deployment:   a.deployment, Witnesses: a.witnesses,
	}
}
