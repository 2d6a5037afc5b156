package witness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

const dep = "sovkeys.test"

var scope = auditlog.Scope{Kind: "tenant", ID: "vpc-w"}

type logFixture struct {
	t   *testing.T
	key *ecdsa.PrivateKey
}

func (l logFixture) tree(tag string, n int) *auditlog.Builder {
	var b auditlog.Builder
	for i := range n {
		if err := b.Append([]byte(fmt.Sprintf("%s-%d", tag, i))); err != nil {
			l.t.Fatal(err)
		}
	}
	return &b
}

func (l logFixture) checkpoint(sc auditlog.Scope, key *ecdsa.PrivateKey, b *auditlog.Builder) []byte {
	root, err := b.Root()
	if err != nil {
		l.t.Fatal(err)
	}
	text := auditlog.TreeHead{Origin: sc.Origin(dep), Size: b.Size(), Root: root}.Text()
	d := sha256.Sum256(text)
	sig, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		l.t.Fatal(err)
	}
	v, _ := auditlog.NewECDSAVerifier(auditlog.KeyName(dep), &key.PublicKey)
	out, err := note.Sign(&note.Note{Text: string(text)}, &auditlog.PresignedSigner{KeyName: v.Name(), Hash: v.KeyHash(), Text: text, Sig: sig})
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func proof(t *testing.T, b *auditlog.Builder, old int64) [][]byte {
	if old == 0 || old == b.Size() {
		return nil
	}
	hr, err := b.HashReader(context.Background(), nil, scope)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tlog.ProveTree(b.Size(), old, hr)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, h := range p {
		out = append(out, h[:])
	}
	return out
}

func TestAuditWitnessAddCheckpoint(t *testing.T) {
	logKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, wkey, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	cfg := Config{Name: "witness.test/w1", Key: wkey, Deployment: dep, LogKey: &logKey.PublicKey, StateDir: dir}
	w, err := New(cfg, slog.New(slog.DiscardHandler), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	c := Client{URL: srv.URL}
	ctx := context.Background()
	l := logFixture{t: t, key: logKey}
	wv, err := auditlog.ParseCosignerVKey(w.VKey())
	if err != nil {
		t.Fatal(err)
	}
	trust := auditlog.Trust{Deployment: dep, LogKey: &logKey.PublicKey, Witnesses: []note.Verifier{wv}, Quorum: 1}

	ten := l.tree("a", 10)
	cp10 := l.checkpoint(scope, logKey, ten)
	sigs, err := c.AddCheckpoint(ctx, 0, nil, cp10)
	if err != nil {
		t.Fatal(err)
	}
	if _, cos, err := trust.OpenCheckpoint(append(append([]byte(nil), cp10...), sigs...), scope); err != nil || len(cos) != 1 {
		t.Fatalf("cosigned checkpoint: %v", err)
	}
	big := l.tree("a", 300)
	if _, err := c.AddCheckpoint(ctx, 10, proof(t, big, 10), l.checkpoint(scope, logKey, big)); err != nil {
		t.Fatalf("10 -> 300: %v", err)
	}

	// The state survives a restart.
	w2, err := New(cfg, slog.New(slog.DiscardHandler), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var conflict *ConflictError
	if _, err := w2.AddCheckpoint(ctx, 0, nil, cp10); !errors.As(err, &conflict) || conflict.Size != 300 {
		t.Fatalf("after restart: %v", err)
	}

	fork := l.tree("a", 299)
	_ = fork.Append([]byte("forged"))
	_ = fork.Append([]byte("more"))
	status := func(body []byte) int {
		resp, err := http.Post(srv.URL+"/add-checkpoint", "text/plain", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	other := auditlog.Scope{Kind: "tenant", ID: "vpc-other"}
	for _, tc := range []struct {
		name string
		body []byte
		want int
	}{
		{"stale old size", FormatAddCheckpoint(10, proof(t, big, 10), l.checkpoint(scope, logKey, big)), http.StatusConflict},
		{"fork with its own proof", FormatAddCheckpoint(300, proof(t, fork, 300), l.checkpoint(scope, logKey, fork)), http.StatusUnprocessableEntity},
		{"other root at the same size", FormatAddCheckpoint(300, nil, l.checkpoint(scope, logKey, l.tree("b", 300))), http.StatusConflict},
		{"rollback", FormatAddCheckpoint(300, nil, l.checkpoint(scope, logKey, l.tree("a", 200))), http.StatusBadRequest},
		{"signed by another key", FormatAddCheckpoint(0, nil, l.checkpoint(other, otherKey, ten)), http.StatusForbidden},
		{"another deployment", FormatAddCheckpoint(0, nil, []byte("elsewhere/audit/tenant/eA\n1\n"+strings.Repeat("A", 43)+"=\n\n— x y\n")), http.StatusNotFound},
		{"garbage", []byte("hello"), http.StatusBadRequest},
		{"bad proof line", []byte("old 1\n!!!\n\n" + string(cp10)), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status(tc.body); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	// Another scope of the same deployment starts its own history.
	if _, err := c.AddCheckpoint(ctx, 0, nil, l.checkpoint(other, logKey, ten)); err != nil {
		t.Fatal(err)
	}
}
