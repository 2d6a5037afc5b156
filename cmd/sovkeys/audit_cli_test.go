package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/mod/sumdb/note"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

// The operator and customer commands against a real export: an audit
// service exporting to versitygw, the HSM signing checkpoints.
func TestAuditCLI(t *testing.T) {
	ctx := context.Background()
	srv := s3test.RunServer(t)
	srv.CreateBucket(ctx, t, "cli-audit", true)
	ns, nc, js := natstest.Run(t)
	runAuditKeyworker(t, nc, js)

	// The service configured as the binary's flags configure it; the
	// scopes below are made up, no registry knows them.
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	var f serviceConfig
	auditService().register(fs, func(string) string { return "" }, &f)
	if err := fs.Parse([]string{"--audit-known-scopes-only=false", "--audit-store", "s3", "--audit-s3-bucket", "cli-audit", "--s3-endpoint", srv.Endpoint()}); err != nil {
		t.Fatal(err)
	}
	f.s3.accessKeyID, f.s3.secretAccessKey = s3test.AccessKey, s3test.SecretKey
	cfg := f.auditConfig()
	cfg.CheckpointEvery = 100 * time.Millisecond
	svc, err := audit.New(cfg, audit.Deps{NC: nc, JS: js, Logger: slog.New(slog.DiscardHandler), Tracer: noop.NewTracerProvider(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(sctx) }()
	t.Cleanup(func() { stop(); <-done })

	deleted := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-cli-1"}
	edited := auditlog.Scope{Kind: shared.AuditKindTenant, ID: "vpc-cli-2"}
	store := auditlog.Scope{Kind: shared.AuditKindXKS, ID: "cli/store"}
	var evs []*shared.AuditEvent
	for i := range 40 {
		for _, sc := range []auditlog.Scope{deleted, edited, store} {
			evs = append(evs, auditEvent(sc, "keyworker", i))
		}
	}
	publishEvents(t, js, evs)

	env := map[string]string{
		"SOVKEYS_NATS_URL": ns.ClientURL(), "SOVKEYS_S3_ENDPOINT": srv.Endpoint(),
		"SOVKEYS_S3_ACCESS_KEY_ID": s3test.AccessKey, "SOVKEYS_S3_SECRET_ACCESS_KEY": s3test.SecretKey,
	}
	getenv := func(k string) string { return env[k] }
	cli := func(args ...string) (code int, stdout, stderr string) {
		var o, e bytes.Buffer
		code = run(ctx, args, getenv, &o, &e)
		return code, o.String(), e.String()
	}

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "audit.pem")
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if code, _, stderr := cli("audit", "public-key", "--out", keyFile); code != 0 {
			return errors.New(stderr)
		}
		return nil
	})
	pemBytes, err := os.ReadFile(keyFile)
	if err != nil || !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PUBLIC KEY-----")) {
		t.Fatalf("public key file: %q %v", pemBytes, err)
	}

	verifyS3 := func(flagName, value string) (int, string, string) {
		return cli("audit", "verify", flagName, value, "--s3-bucket", "cli-audit", "--public-key", keyFile)
	}
	for _, sc := range []auditlog.Scope{deleted, edited} {
		testkit.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
			if code, out, stderr := verifyS3("--tenant", sc.ID); code != 0 || !strings.Contains(out, "records 1..40 ") {
				return errors.New(out + stderr)
			}
			return nil
		})
	}
	testkit.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		if code, out, stderr := verifyS3("--keystore", "/cli/store/"); code != 0 || !strings.Contains(out, "records 1..40 ") {
			return errors.New(out + stderr)
		}
		return nil
	})
	if code, out, stderr := cli("audit", "verify", "--tenant", deleted.ID, "--s3-bucket", "cli-audit", "--public-key", keyFile, "--json"); code != 0 || !strings.Contains(out, `"last": 40`) {
		t.Fatalf("verify --json: %d %s %s", code, out, stderr)
	}
	// The printed checkpoint is kept byte for byte: a valid signed note for
	// x/mod's note.Open and for audit verify --checkpoint.
	if code, out, stderr := cli("audit", "checkpoint", "--keystore", "cli/store"); code != 0 {
		t.Fatalf("checkpoint: %s %s", out, stderr)
	} else if th, _, err := (auditlog.Trust{Deployment: audit.DefaultDeployment, LogKey: mustKey(t, pemBytes)}).OpenCheckpoint([]byte(out), store); err != nil || th.Size != 40 {
		t.Fatalf("checkpoint output %q: %v", out, err)
	} else {
		v, err := auditlog.NewECDSAVerifier(auditlog.KeyName(audit.DefaultDeployment), mustKey(t, pemBytes))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := note.Open([]byte(out), note.VerifierList(v)); err != nil {
			t.Fatalf("note.Open of the printed checkpoint %q: %v", out, err)
		}
		kept := filepath.Join(dir, "kept.txt")
		if err := os.WriteFile(kept, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, vout, stderr := cli("audit", "verify", "--keystore", "/cli/store/", "--s3-bucket", "cli-audit", "--public-key", keyFile, "--checkpoint", kept); code != 0 || !strings.Contains(vout, "records 1..40 ") {
			t.Fatalf("verify --checkpoint kept.txt: %d %s %s", code, vout, stderr)
		}
	}

	// A proof of one record, checked offline with only the public key.
	code, proofJSON, stderr := cli("audit", "prove", "--tenant", edited.ID, "--seq", "12", "--s3-bucket", "cli-audit", "--public-key", keyFile)
	if code != 0 {
		t.Fatalf("prove: %s", stderr)
	}
	proofFile := filepath.Join(dir, "proof.json")
	if err := os.WriteFile(proofFile, []byte(proofJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := cli("audit", "verify", "--proof", proofFile, "--public-key", keyFile); code != 0 || !strings.Contains(out, "record 12 of tenant:vpc-cli-2 is in the signed tree of 40") {
		t.Fatalf("verify --proof: %d %s %s", code, out, stderr)
	}
	forged := strings.Replace(proofJSON, `"seq": 12`, `"seq": 13`, 1)
	if err := os.WriteFile(proofFile, []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := cli("audit", "verify", "--proof", proofFile, "--public-key", keyFile); code == 0 {
		t.Fatal("a proof moved to another sequence number verified")
	}

	// Tampering in the bucket fails verification, naming the sequence.
	client := srv.Client()
	bundle := func(sc auditlog.Scope) *string {
		return aws.String(audit.DefaultPrefix + sc.TlogPrefix() + auditlog.BundlePath(0, 40))
	}
	if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("cli-audit"), Key: bundle(deleted)}); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := verifyS3("--tenant", deleted.ID); code != 1 || !strings.Contains(stderr, "record 1: entry bundle") {
		t.Fatalf("verify after deleting the records: exit %d, %s", code, stderr)
	}
	obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("cli-audit"), Key: bundle(edited)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(obj.Body)
	obj.Body.Close()
	entries, err := auditlog.SplitBundle(body)
	if err != nil {
		t.Fatal(err)
	}
	entries[11] = bytes.Replace(entries[11], []byte(`"result":"success"`), []byte(`"result":"failure"`), 1)
	body = nil
	for _, e := range entries {
		body, _ = auditlog.AppendBundle(body, e)
	}
	sum := sha256.Sum256(body)
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String("cli-audit"), Key: bundle(edited), Body: bytes.NewReader(body),
		Metadata: map[string]string{"sha256": hex.EncodeToString(sum[:])},
	}); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := verifyS3("--tenant", edited.ID); code != 1 || !strings.Contains(stderr, "record 12: altered") {
		t.Fatalf("verify after editing record 12: exit %d, %s", code, stderr)
	}

	// Usage errors.
	for _, args := range [][]string{
		{"audit", "verify"},
		{"audit", "verify", "--tenant", "a", "--keystore", "b"},
		{"audit", "verify", "--tenant", "a", "--s3-bucket", "cli-audit"}, // a bucket needs a key file
	} {
		if code, _, _ := cli(args...); code == 0 {
			t.Errorf("sovkeys %v succeeded", args)
		}
	}
}

func TestAuditFlagsConfig(t *testing.T) {
	parse := func(args ...string) error {
		fs := flag.NewFlagSet("audit", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var f serviceConfig
		auditService().register(fs, func(string) string { return "" }, &f)
		if err := fs.Parse(args); err != nil {
			return err
		}
		return f.auditConfig().Validate()
	}
	if err := parse(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if err := parse("--audit-store", "s3", "--audit-s3-bucket", "central-audit", "--audit-tenant-export"); err != nil {
		t.Fatalf("s3: %v", err)
	}
	for _, bad := range [][]string{
		{"--audit-store", "s3"},
		{"--audit-store", "tape"},
		{"--audit-sign-pool", "No Such Pool"},
		{"--audit-deployment", "no spaces allowed"},
	} {
		if err := parse(bad...); !errors.Is(err, shared.ErrConfigValidation) {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func mustKey(t *testing.T, pemBytes []byte) *ecdsa.PublicKey {
	t.Helper()
	k, err := auditlog.ParsePublicKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
