package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// A real Prometheus (Debian's prometheus package, started by hand: no
// systemd) scraping every service of the deployment every second, with the
// project's alerting rules (deploy/prometheus/rules) loaded. The rules'
// `for:` windows are minutes, made for people; the copy loaded here waits
// promFor instead, so an injected fault fires its alert in seconds. The
// expressions are the shipped ones, unchanged.

const promFor = "3s"

// prometheus is the running server and its HTTP API.
type prometheus struct {
	proc *proc
	base string // http://127.0.0.1:PORT
}

// scrapeTarget is one process Prometheus scrapes.
type scrapeTarget struct {
	name, role, addr string
}

// scrapeTargets lists the deployment's services for Prometheus, with their
// role (the name before the dash).
func (d *deployment) scrapeTargets() []scrapeTarget {
	var out []scrapeTarget
	for _, s := range d.services {
		role, _, _ := strings.Cut(s.name, "-")
		out = append(out, scrapeTarget{name: s.name, role: role, addr: d.metricsAddr[s.name]})
	}
	return out
}

var forRe = regexp.MustCompile(`(?m)^(\s*for:\s*)\S+\s*$`)

// testRules copies the shipped rule files into dir with every `for:`
// shortened to promFor, and returns how many alerts they hold.
func testRules(t *testing.T, dir string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "prometheus", "rules", "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files (%v)", err)
	}
	alerts := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		alerts += strings.Count(string(b), "- alert:")
		short := forRe.ReplaceAllString(string(b), "${1}"+promFor)
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(short), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return alerts
}

// startPrometheus starts Prometheus on a free loopback port scraping
// targets, and waits until it is ready with every rule loaded. It returns
// nil, after logging why, when Debian's prometheus binary is missing.
func startPrometheus(t *testing.T, dir string, targets []scrapeTarget) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Log("prometheus not found: alert checks SKIPPED (apt-get install prometheus, or `make deps`)")
		return nil
	}
	dir = filepath.Join(dir, "prometheus")
	rulesDir := filepath.Join(dir, "rules")
	if err := os.MkdirAll(rulesDir, 0o700); err != nil {
		t.Fatal(err)
	}
	alerts := testRules(t, rulesDir)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n  - %s/*.yml\nscrape_configs:\n  - job_name: sovkeys\n    static_configs:\n", rulesDir)
	for _, tg := range targets {
		fmt.Fprintf(&cfg, "      - targets: [%q]\n        labels: {role: %q}\n", tg.addr, tg.role)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := &prometheus{base: "http://" + addr, proc: &proc{name: "prometheus", bin: bin, args: []string{
		"--config.file=" + conf, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr, "--storage.tsdb.retention.time=1h",
	}}}
	p.proc.start(t)
	t.Cleanup(p.proc.stop)
	testkit.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		var groups struct {
			Groups []struct {
				Rules []json.RawMessage `json:"rules"`
			} `json:"groups"`
		}
		if err := p.get("/api/v1/rules?type=alert", nil, &groups); err != nil {
			return err
		}
		n := 0
		for _, g := range groups.Groups {
			n += len(g.Rules)
		}
		if n != alerts {
			return fmt.Errorf("prometheus loaded %d of %d alerting rules", n, alerts)
		}
		return nil
	})
	return p
}

// get calls the API at path with query parameters q and decodes the
// "data" of a success into out.
func (p *prometheus) get(path string, q url.Values, out any) error {
	u := p.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Status != "success" {
		return fmt.Errorf("prometheus %s: %d %s %s", path, resp.StatusCode, env.Error, b[:min(len(b), 300)])
	}
	return json.Unmarshal(env.Data, out)
}

// alert is one entry of /api/v1/alerts.
type alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

func (p *prometheus) alerts() ([]alert, error) {
	var data struct {
		Alerts []alert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

// firing returns the firing alerts named name whose labels include match.
func (p *prometheus) firing(name string, match map[string]string) ([]alert, error) {
	all, err := p.alerts()
	if err != nil {
		return nil, err
	}
	var out []alert
next:
	for _, a := range all {
		if a.State != "firing" || a.Labels["alertname"] != name {
			continue
		}
		for k, v := range match {
			if a.Labels[k] != v {
				continue next
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// query evaluates expr now and returns how many series it gave.
func (p *prometheus) query(expr string) (int, error) {
	var data struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return 0, err
	}
	if data.ResultType == "scalar" {
		return 1, nil
	}
	return len(data.Result), nil
}

// dashboardExprs returns every query of the Grafana dashboard, by panel,
// with Grafana's range variable replaced as Grafana would at a 1 s scrape.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "compose", "grafana", "dashboards", "sovkeys.json"))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr   string `json:"expr"`
			Legend string `json:"legendFormat"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var add func(ps []panel)
	add = func(ps []panel) {
		for _, p := range ps {
			for i, tg := range p.Targets {
				expr := strings.NewReplacer("$__rate_interval", "30s", "$__interval", "5s", "$__range", "5m").Replace(tg.Expr)
				out[fmt.Sprintf("%s #%d", p.Title, i+1)] = expr
			}
			var sub []panel
			for _, raw := range p.Panels {
				var s panel
				if json.Unmarshal(raw, &s) == nil {
					sub = append(sub, s)
				}
			}
			add(sub)
		}
	}
	add(d.Panels)
	return out
}
