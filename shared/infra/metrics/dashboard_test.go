package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboardPath is the Grafana dashboard compose provisions.
var dashboardPath = filepath.Join("..", "..", "..", "deploy", "compose", "grafana", "dashboards", "sovkeys.json")

// promQL pieces the check understands: a sovkeys metric with an optional
// label matcher set, and grouping clauses.
var (
	selectorRe = regexp.MustCompile(`\b(sovkeys_[a-z0-9_]+)(\{([^}]*)\})?`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"`)
	groupingRe = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	legendRe   = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

type dashboard struct {
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr   string `json:"expr"`
		Legend string `json:"legendFormat"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// family resolves a series name to its family: histograms expose
// _bucket, _sum and _count series.
func family(byName map[string]Family, series string) (Family, bool) {
	if f, ok := byName[series]; ok {
		return f, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(series, suffix); ok {
			if f, ok := byName[base]; ok && f.Type == "histogram" {
				return f, true
			}
		}
	}
	return Family{}, false
}

// TestDashboardNamesRegisteredMetrics checks that every PromQL expression of
// the Grafana dashboard names metrics the services register, with label
// names those metrics have: a renamed metric or label breaks this test,
// not the dashboard at 3 a.m.
func TestDashboardNamesRegisteredMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	byName := map[string]Family{}
	for _, f := range Families() {
		byName[f.Name] = f
	}
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	used := map[string]bool{}
	exprs := 0
	for _, p := range all {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "sovkeys-prometheus" {
			t.Errorf("panel %q: datasource is not the provisioned Prometheus (uid sovkeys-prometheus)", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs++
			sels := selectorRe.FindAllStringSubmatch(tg.Expr, -1)
			if len(sels) == 0 {
				t.Errorf("panel %q: %q names no sovkeys metric", p.Title, tg.Expr)
				continue
			}
			labels := map[string]bool{}
			for _, s := range sels {
				f, ok := family(byName, s[1])
				if !ok {
					t.Errorf("panel %q: %s is not a registered metric", p.Title, s[1])
					continue
				}
				used[f.Name] = true
				for _, l := range f.Labels {
					labels[l] = true
				}
				if f.Type == "histogram" {
					labels["le"] = true
				}
				for _, m := range matcherRe.FindAllStringSubmatch(s[3], -1) {
					if !slices.Contains(f.Labels, m[1]) {
						t.Errorf("panel %q: %s has no label %q", p.Title, f.Name, m[1])
					}
				}
			}
			for _, g := range groupingRe.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(g[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !labels[l] {
						t.Errorf("panel %q: groups by %q, which its metrics do not have", p.Title, l)
					}
				}
			}
			for _, l := range legendRe.FindAllStringSubmatch(tg.Legend, -1) {
				if !labels[l[1]] {
					t.Errorf("panel %q: legend uses %q, which its metrics do not have", p.Title, l[1])
				}
			}
		}
	}
	if exprs == 0 {
		t.Fatal("dashboard has no queries")
	}
	// The dashboard covers what an operator of sovkeys must see.
	for _, must := range []string{
		"sovkeys_gateway_requests_total", "sovkeys_gateway_request_duration_seconds",
		"sovkeys_hsm_queue_depth", "sovkeys_hsm_inflight", "sovkeys_hsm_inflight_budget",
		"sovkeys_audit_events_waiting", "sovkeys_audit_lag_seconds", "sovkeys_audit_checkpoint_timestamp_seconds",
		"sovkeys_kill_switches_engaged", "sovkeys_throttled_total", "sovkeys_refusals_total",
	} {
		if !used[must] {
			t.Errorf("dashboard shows no %s", must)
		}
	}
}

// TestFamiliesWellFormed: every name is prefixed, unique and documented,
// and no label is one that would carry unbounded, caller-chosen values.
func TestFamiliesWellFormed(t *testing.T) {
	seen := map[string]bool{}
	forbidden := []string{"request_id", "key_id", "keystore", "tenant", "caller", "instance", "principal", "source_ip", "trace_id"}
	for _, f := range Families() {
		if !strings.HasPrefix(f.Name, Namespace+"_") {
			t.Errorf("%s: missing the %s_ prefix", f.Name, Namespace)
		}
		if seen[f.Name] {
			t.Errorf("%s defined twice", f.Name)
		}
		seen[f.Name] = true
		if f.Help == "" {
			t.Errorf("%s: no help text", f.Name)
		}
		if f.Type == "counter" && !strings.HasSuffix(f.Name, "_total") {
			t.Errorf("%s: a counter's name ends in _total", f.Name)
		}
		for _, l := range f.Labels {
			if slices.Contains(forbidden, l) {
				t.Errorf("%s: label %q is unbounded", f.Name, l)
			}
		}
	}
}
