package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, line string
		want       time.Duration
		wantErr    bool
	}{
		{"plain", "4242 (sovkeys) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0", 3 * time.Second, false},
		{"name with spaces and parens", "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 30 * time.Millisecond, false},
		{"short", "7 (x) R 1 2", 0, true},
		{"no name", "garbage", 0, true},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 a 2", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat(tc.line)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseProcStat = %v, %v; want %v (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestRunReportsCPU(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	f := newFakeXKS(t)
	args := f.args(1_000_000, "-concurrency", "2", "-duration", "300ms", "-node-pid", strconv.Itoa(os.Getpid()))
	rep, _, text := runReport(t, t.Context(), args)
	c := rep.CPU
	if c == nil || c.NodePID != os.Getpid() || c.NodeSampleFail != "" || c.WindowSeconds < 0.25 || c.ClientCores <= 0 {
		t.Fatalf("cpu = %+v", c)
	}
	if rep.Succeeded > 0 && c.ClientMsPerOK <= 0 {
		t.Errorf("client ms per answer = %v", c.ClientMsPerOK)
	}
	if !containsAll(text, "cpu ", "cores", "node (pid") {
		t.Errorf("text report lacks the cpu line:\n%s", text)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
