package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Requests slow only in the first tenth of every 10 s and during a GC are
// reported as bunched at that phase and overlapping the GC.
func TestStallsFindsAPeriodicStall(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Unix(1_700_000_000, 0)
	var samples []sample
	for i := range 30_000 { // 30 s at 1,000 req/s
		at := t0.Add(time.Duration(i) * time.Millisecond)
		d := 2 * time.Millisecond
		if at.Sub(t0)%(10*time.Second) < 500*time.Millisecond && i%10 == 0 {
			d = 40 * time.Millisecond
		}
		samples = append(samples, sample{at: at, d: d})
	}
	reqs := filepath.Join(dir, "r.csv")
	if err := writeSamples(reqs, samples); err != nil {
		t.Fatal(err)
	}
	gc := filepath.Join(dir, "gc.txt")
	if err := os.WriteFile(gc, []byte("gc 1 @20.000s 1%: 0.01+3+0.01 ms clock, 0+0/0/0+0 ms cpu\nnot a gc line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	code := runStalls([]string{"-requests", reqs, "-period", "10s", "-gctrace", gc, "-gc-start", fmt.Sprint(t0.UnixMicro())}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	s := out.String()
	for _, want := range []string{"30000 requests, 0 failed", "period 10s", "busiest phase holds 10.0×", "GC: 1 cycles"} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in:\n%s", want, s)
		}
	}
}
