package metrics

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The alerting rules (deploy/prometheus/rules) and their promtool tests
// (deploy/prometheus/tests), checked by Prometheus's own promtool (Debian
// package prometheus, installed by `make deps`), plus what promtool cannot
// know: every metric a rule reads is one the services register, every
// alert says how bad it is and links a runbook section that exists, and
// every alert has a promtool test where it fires and one where it does not.

var (
	rulesDir      = filepath.Join("..", "..", "..", "deploy", "prometheus", "rules")
	ruleTestsDir  = filepath.Join("..", "..", "..", "deploy", "prometheus", "tests")
	operationsDoc = filepath.Join("..", "..", "..", "docs", "operations.md")

	alertRe     = regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)\s*$`)
	severityRe  = regexp.MustCompile(`(?m)^\s*severity:\s*(critical|warning|info)\s*$`)
	summaryRe   = regexp.MustCompile(`(?m)^\s*summary:\s*"(.{20,})"\s*$`)
	runbookRe   = regexp.MustCompile(`(?m)^\s*runbook_url:\s*\S+/docs/operations\.md#(\S+)\s*$`)
	headingRe   = regexp.MustCompile(`(?m)^#{2,4} (\S+)\s*$`)
	testAlertRe = regexp.MustCompile(`(?m)^\s*alertname:\s*(\S+)\s*$`)
)

// promtool finds the promtool binary or skips, saying how to get it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: install Debian's prometheus package (apt-get install prometheus, or `make deps`) to check the alerting rules")
	}
	return p
}

func globFiles(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (%v)", pattern, err)
	}
	return files
}

// TestAlertRulesPromtool: the rule files parse (promtool check rules) and
// their unit tests pass (promtool test rules); promtool's own message is
// the failure.
func TestAlertRulesPromtool(t *testing.T) {
	pt := promtool(t)
	rules := globFiles(t, filepath.Join(rulesDir, "*.yml"))
	if out, err := exec.Command(pt, append([]string{"check", "rules"}, rules...)...).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	conf := filepath.Join(rulesDir, "..", "prometheus.yml")
	if out, err := exec.Command(pt, "check", "config", conf).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	tests := globFiles(t, filepath.Join(ruleTestsDir, "*.test.yml"))
	if out, err := exec.Command(pt, append([]string{"test", "rules"}, tests...)...).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestAlertRulesBadFileFails: a rule file that does not parse is refused,
// with promtool's reason (the check above would fail the same way).
func TestAlertRulesBadFileFails(t *testing.T) {
	pt := promtool(t)
	bad := filepath.Join(t.TempDir(), "bad.yml")
	body := "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(sovkeys_gateway_requests_total[5m]) > 1\n"
	if err := os.WriteFile(bad, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(pt, "check", "rules", bad).CombinedOutput()
	if err == nil {
		t.Fatalf("promtool accepted a rule with unbalanced parentheses:\n%s", out)
	}
	if !strings.Contains(string(out), "parse error") {
		t.Errorf("promtool's refusal does not say why:\n%s", out)
	}
}

// alertBlocks splits a rule file into its alerts' text.
func alertBlocks(text string) map[string]string {
	out := map[string]string{}
	locs := alertRe.FindAllStringSubmatchIndex(text, -1)
	for i, l := range locs {
		end := len(text)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		out[text[l[2]:l[3]]] = text[l[0]:end]
	}
	return out
}

// TestAlertRulesContract checks each alert's labels, annotations, metrics
// and tests (no promtool needed).
func TestAlertRulesContract(t *testing.T) {
	doc, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, h := range headingRe.FindAllStringSubmatch(string(doc), -1) {
		anchors[strings.ToLower(h[1])] = true
	}
	byName := map[string]Family{}
	for _, f := range Families() {
		byName[f.Name] = f
	}
	alerts := map[string]string{}
	for _, f := range globFiles(t, filepath.Join(rulesDir, "*.yml")) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for name, block := range alertBlocks(string(b)) {
			if _, dup := alerts[name]; dup {
				t.Errorf("alert %s defined twice", name)
			}
			alerts[name] = block
		}
	}
	if len(alerts) < 20 {
		t.Errorf("only %d alerts: the failure modes of issue 23 need more", len(alerts))
	}
	// Which alerts the promtool tests see fire (an entry with expected
	// labels) and stay quiet (exp_alerts: []).
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range globFiles(t, filepath.Join(ruleTestsDir, "*.test.yml")) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		locs := testAlertRe.FindAllStringSubmatchIndex(text, -1)
		for i, l := range locs {
			end := len(text)
			if i+1 < len(locs) {
				end = locs[i+1][0]
			}
			name, entry := text[l[2]:l[3]], text[l[1]:end]
			if strings.Contains(entry, "exp_labels:") {
				fires[name] = true
			} else if strings.Contains(entry, "exp_alerts: []") {
				quiet[name] = true
			}
		}
	}
	for name, block := range alerts {
		if !severityRe.MatchString(block) {
			t.Errorf("%s: no severity critical|warning|info", name)
		}
		if !summaryRe.MatchString(block) {
			t.Errorf("%s: no summary in words", name)
		}
		if m := runbookRe.FindStringSubmatch(block); m == nil {
			t.Errorf("%s: no runbook_url into docs/operations.md", name)
		} else if !anchors[m[1]] {
			t.Errorf("%s: runbook anchor #%s has no heading in docs/operations.md", name, m[1])
		}
		sels := selectorRe.FindAllStringSubmatch(block, -1)
		for _, s := range sels {
			if _, ok := family(byName, s[1]); !ok {
				t.Errorf("%s: %s is not a registered metric", name, s[1])
			}
		}
		if len(sels) == 0 && !strings.Contains(block, "up{") {
			t.Errorf("%s reads no sovkeys metric", name)
		}
		if !fires[name] || !quiet[name] {
			t.Errorf("%s: promtool tests must show it firing (%v) and quiet (%v)", name, fires[name], quiet[name])
		}
	}
}
