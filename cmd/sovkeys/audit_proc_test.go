package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// auditProc is one `sovkeys audit` child process.
type auditProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
}

// Two audit processes sequence a burst of events at once; one is killed
// with SIGKILL mid-burst and restarted. Every scope ends gapless, with every
// event recorded exactly once, signed by the HSM, exported, and `sovkeys
// audit verify` (the binary) accepts it.
func TestAuditProcessesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs audit processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sovkeys")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns, nc, js := natstest.Run(t)
	runAuditKeyworker(t, nc, js)
	url := ns.ClientURL()

	var mu sync.Mutex
	var procs []*auditProc
	start := func() *auditProc {
		p := &auditProc{cmd: exec.Command(bin, "audit", "--nats", url, "--log-level", "warn", "--audit-known-scopes-only=false"), stderr: &syncBuffer{}, done: make(chan struct{})}
		p.cmd.Stderr = p.stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = p.cmd.Wait(); close(p.done) }()
		mu.Lock()
		procs = append(procs, p)
		mu.Unlock()
		return p
	}
	t.Cleanup(func() {
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
			if t.Failed() {
				t.Logf("audit process %d stderr:\n%s", p.cmd.Process.Pid, p.stderr)
			}
		}
	})
	a := start()
	start()

	scopes := []auditlog.Scope{
		{Kind: shared.AuditKindTenant, ID: "vpc-kill-1"}, {Kind: shared.AuditKindTenant, ID: "vpc-kill-2"},
		{Kind: shared.AuditKindXKS, ID: "kill/store"}, {Kind: shared.AuditKindOperator},
	}
	want := map[auditlog.Scope]map[string]bool{}
	for _, sc := range scopes {
		want[sc] = map[string]bool{}
	}
	const chunks, perChunk = 16, 500
	ctx := context.Background()
	logStream := func() jetstream.Stream {
		var s jetstream.Stream
		testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() (err error) {
			s, err = js.Stream(ctx, auditlog.StreamLog)
			return err
		})
		return s
	}
	for c := range chunks {
		var evs []*shared.AuditEvent
		for i := c * perChunk; i < (c+1)*perChunk; i++ {
			sc := scopes[i%len(scopes)]
			svc := []string{"authn", "keyworker"}[i%2]
			ev := auditEvent(sc, svc, i/2)
			evs = append(evs, ev)
			want[sc][auditlog.DedupeID(ev.Service, ev.RequestID)] = true
		}
		publishEvents(t, js, evs)
		switch c {
		case 5:
			// Kill -9 while it is numbering: wait until records flow.
			s := logStream()
			testkit.CheckFor(t, recordsFlowWait, 5*time.Millisecond, func() error {
				info, err := s.Info(ctx)
				if err != nil {
					return err
				}
				// A slow machine numbers in fewer, larger batches: wait for
				// records, not for a number of batches.
				if info.State.Msgs < 2 {
					return fmt.Errorf("only %d log messages", info.State.Msgs)
				}
				return nil
			})
			if err := a.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-a.done
		case 9:
			start()
		}
	}

	spki := publishedKey(t, js)
	pub, err := auditlog.ParsePublicKey(spki)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := auditlog.OpenObjectBucket(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scopes {
		checkRecordedOnce(t, js, sc, want[sc])
		n := uint64(len(want[sc]))
		testkit.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
			rep, err := auditlog.VerifyTlog(ctx, obs, sc, auditlog.Trust{Deployment: audit.DefaultDeployment, LogKey: pub}, auditlog.TlogOptions{})
			if err != nil {
				return err
			}
			if rep.Last != n {
				return fmt.Errorf("%s: verified up to %d of %d", sc, rep.Last, n)
			}
			return nil
		})
	}
	// For the record: what the surviving processes saw (micro stats).
	inbox := nats.NewInbox()
	if sub, err := nc.SubscribeSync(inbox); err == nil {
		_ = nc.PublishRequest("$SRV.STATS."+shared.ServiceAudit, inbox, nil)
		for {
			m, err := sub.NextMsg(time.Second)
			if err != nil {
				break
			}
			var st struct {
				Endpoints []struct {
					Data audit.Stats `json:"data"`
				} `json:"endpoints"`
			}
			if json.Unmarshal(m.Data, &st) == nil && len(st.Endpoints) > 0 {
				d := st.Endpoints[0].Data
				t.Logf("audit process: %d records in %d batches, %d redelivered events found already recorded, %d commit conflicts",
					d.Records, d.Batches, d.Duplicates, d.Conflicts)
			}
		}
		_ = sub.Unsubscribe()
	}

	// The binary verifies too, with a key file as a customer would.
	keyFile := filepath.Join(dir, "audit.pem")
	if err := os.WriteFile(keyFile, auditlog.PublicKeyPEM(spki), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "audit", "verify", "--nats", url, "--tenant", "vpc-kill-1", "--public-key", keyFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("records 1..%d", len(want[scopes[0]]))) {
		t.Fatalf("sovkeys audit verify: %v\n%s", err, out)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "audit", "verify", "--nats", url, "--tenant", "vpc-never-seen", "--public-key", keyFile)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || !strings.Contains(stderr.String(), "record 1: missing") {
		t.Fatalf("verify of an empty log: %v\n%s", err, stderr.String())
	}
}

// recordsFlowWait bounds the wait for the first records of the burst: the
// suite runs other packages (and the cluster test) beside this one.
const recordsFlowWait = 2 * time.Minute
