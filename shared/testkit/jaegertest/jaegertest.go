// Package jaegertest runs a real Jaeger (v2, all-in-one: OTLP receiver,
// in-memory store, query API) on loopback for a test, on free ports. The
// binary is installed by `make jaeger` (scripts/install-jaeger.sh, which
// `make test` runs); a test skips, with the command to run, when it is
// missing.
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sovkeys/sovkeys/shared/testkit"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	binaryName   = "jaeger"
	startTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
)

// config is Jaeger's all-in-one configuration cut to what a test needs:
// OTLP in, memory storage, the query API; no fixed port anywhere.
const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: %[3]s
    grpc:
      endpoint: %[4]s
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[1]s
      http:
        endpoint: %[2]s
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// Server is a running Jaeger.
type Server struct {
	OTLPGRPC string // host:port of the OTLP/gRPC receiver
	OTLPHTTP string // host:port of the OTLP/HTTP receiver
	Query    string // base URL of the query API, e.g. http://127.0.0.1:16686

	cmd  *exec.Cmd
	done chan struct{}
	logs *tailBuffer
	once sync.Once
}

// Run starts Jaeger for t and stops it at t.Cleanup. It skips t when the
// binary is not installed.
func Run(t testing.TB) *Server {
	t.Helper()
	bin, err := FindBinary()
	if err != nil {
		t.Skipf("jaegertest: %v", err)
	}
	for attempt := 0; ; attempt++ {
		s, err := start(bin, t.TempDir())
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		// A free port can be taken between probing and Jaeger's bind: retry.
		if attempt == 2 {
			t.Fatalf("jaegertest: start jaeger: %v", err)
		}
	}
}

func start(bin, dir string) (*Server, error) {
	addrs := make([]string, 4)
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, addrs[0], addrs[1], addrs[2], addrs[3]), 0o600); err != nil {
		return nil, err
	}
	s := &Server{OTLPGRPC: addrs[0], OTLPHTTP: addrs[1], Query: "http://" + addrs[2], logs: &tailBuffer{max: 16 << 10}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, "--config", cfg)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	if err := s.waitReady(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w\n%s", err, s.logs)
	}
	return s, nil
}

// waitReady polls the query API until it answers, the process exits or
// startTimeout passes.
func (s *Server) waitReady() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(s.Query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && s.otlpUp() {
				return nil
			}
		}
		select {
		case <-s.done:
			return errors.New("jaeger exited during startup")
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not ready on %s after %s", s.Query, startTimeout)
		}
	}
}

func (s *Server) otlpUp() bool {
	for _, a := range []string{s.OTLPGRPC, s.OTLPHTTP} {
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// Stop stops Jaeger (SIGTERM, then SIGKILL). Idempotent.
func (s *Server) Stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(stopTimeout):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
}

// Logs returns the tail of Jaeger's output.
func (s *Server) Logs() string { return s.logs.String() }

// Trace is one trace as the query API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	Tags          []KeyValue  `json:"tags"`
	ProcessID     string      `json:"processID"`
}

// Reference links a span to its parent.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// KeyValue is a span tag (attribute).
type KeyValue struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Process names the service that emitted spans.
type Process struct {
	ServiceName string `json:"serviceName"`
}

// Tag returns the string value of the span's tag key, or "".
func (sp Span) Tag(key string) string {
	for _, kv := range sp.Tags {
		if kv.Key == key {
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

// Parent returns the span id of the span's CHILD_OF parent, or "".
func (sp Span) Parent() string {
	for _, r := range sp.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Service returns the service name of the span in trace tr.
func (tr Trace) Service(sp Span) string { return tr.Processes[sp.ProcessID].ServiceName }

// Traces queries the traces of service (optionally of one operation) and
// returns them with the raw JSON answer.
func (s *Server) Traces(ctx context.Context, service, operation string) ([]Trace, []byte, error) {
	q := url.Values{"service": {service}, "limit": {"100"}, "lookback": {"1h"}}
	if operation != "" {
		q.Set("operation", operation)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Query+"/api/traces?"+q.Encode(), nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, raw, fmt.Errorf("jaeger query: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	var out struct {
		Data []Trace `json:"data"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, raw, fmt.Errorf("jaeger query: decode: %w", err)
	}
	return out.Data, raw, nil
}

// FindBinary looks for jaeger in PATH, $(go env GOPATH)/bin and <repo>/bin,
// where scripts/install-jaeger.sh puts it.
func FindBinary() (string, error) {
	return testkit.FindBinary(binaryName, "build it once with `make jaeger` (scripts/install-jaeger.sh, about 7 min)")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if len(b.b) > b.max {
		b.b = append([]byte(nil), b.b[len(b.b)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}
