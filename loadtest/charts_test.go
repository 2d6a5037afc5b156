package main

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChartCommandWritesPNGs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r Report) string {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	one := write("c1.json", Report{API: "xks", Op: "encrypt", Mode: "closed", Concurrency: 1, Throughput: 200,
		Timeline: []Second{{T: 0, OK: 200, MaxMs: 4}, {T: 1, OK: 20, Errors: 5, MaxMs: 800}, {T: 2, OK: 200, MaxMs: 5}}})
	eight := write("c8.json", Report{API: "xks", Op: "encrypt", Mode: "closed", Concurrency: 8, Throughput: 1200})
	open := write("open.json", Report{API: "xks", Op: "encrypt", Mode: "open", OfferedRate: 100})

	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"timeline", []string{"-mark", "1s=kill nats-2", "-mark", "1.5=restart", one}, 0},
		{"throughput", []string{eight, one}, 0},
		{"open loop in a throughput chart", []string{one, open}, 2},
		{"bad mark", []string{"-mark", "soon", one}, 2},
		{"no reports", nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".png")
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), append([]string{"chart", "-out", out}, tc.args...), os.Getenv, &stdout, &stderr); code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, stderr.String())
			}
			if tc.code != 0 {
				return
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			img, err := png.Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			if b := img.Bounds(); b.Dx() != 800 || b.Dy() != 400 {
				t.Fatalf("size %v", b)
			}
		})
	}
}

func TestMarkFlag(t *testing.T) {
	var m markFlag
	for _, v := range []string{"12s=kill", "2.5=restart", "1m=end"} {
		if err := m.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if m[0].X != 12 || m[1].X != 2.5 || m[2].X != 60 || m[2].Label != "end" {
		t.Fatalf("marks %+v", m)
	}
}
