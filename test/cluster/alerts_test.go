package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/testkit"
)

// Alerts fired for real: each fault below is injected into the running
// deployment (under the suite's XKS load) and the alert an on-call engineer
// would get must be firing in Prometheus, with its runbook link, during the
// fault, and gone after it.

const (
	fireWithin    = 60 * time.Second // scrape 1 s + sampling 2 s + JetStream's 10 s peer timeout + for
	resolveWithin = 90 * time.Second // a restarted NATS node catching up, a keyworker unsealing
)

// expectAlert waits for alert name (labels including match) to fire and
// checks its annotations.
func expectAlert(t *testing.T, p *prometheus, fault, name string, match map[string]string) {
	t.Helper()
	start := time.Now()
	var got []alert
	testkit.CheckFor(t, fireWithin, 250*time.Millisecond, func() (err error) {
		if got, err = p.firing(name, match); err == nil && len(got) == 0 {
			err = fmt.Errorf("%s: alert %s%v not firing", fault, name, match)
		}
		return err
	})
	a := got[0]
	if !strings.Contains(a.Annotations["runbook_url"], "docs/operations.md#"+strings.ToLower(name)) &&
		!strings.HasPrefix(name, "CredentialExpires") {
		t.Errorf("%s: %s runbook_url %q", fault, name, a.Annotations["runbook_url"])
	}
	if len(a.Annotations["summary"]) < 20 || a.Labels["severity"] == "" {
		t.Errorf("%s: %s has no summary or severity: %v %v", fault, name, a.Labels, a.Annotations)
	}
	t.Logf("%s: %s fired after %.1f s (%s): %s", fault, name, time.Since(start).Seconds(), a.Labels["severity"], a.Annotations["summary"])
}

// expectResolved waits until no alert name (labels including match) is
// pending or firing.
func expectResolved(t *testing.T, p *prometheus, fault, name string, match map[string]string) {
	t.Helper()
	start := time.Now()
	testkit.CheckFor(t, resolveWithin, 250*time.Millisecond, func() error {
		all, err := p.alerts()
		if err != nil {
			return err
		}
	next:
		for _, a := range all {
			if a.Labels["alertname"] != name {
				continue
			}
			for k, v := range match {
				if a.Labels[k] != v {
					continue next
				}
			}
			return fmt.Errorf("%s: alert %s%v still %s", fault, name, match, a.State)
		}
		return nil
	})
	t.Logf("%s: %s not active (waited %.1f s)", fault, name, time.Since(start).Seconds())
}

// alertFaults injects the faults of issue 23 one after the other, each
// asserted through Prometheus's API, then evaluates the dashboard's
// queries (still under load, after errors of every kind were answered).
func alertFaults(t *testing.T, d *deployment, p *prometheus) {
	t.Helper()
	began := time.Now()
	// A NATS node dies: its replicas stop being current.
	{
		const fault = "alerts: kill -9 NATS node"
		expectResolved(t, p, fault+" (before)", "NATSNodeDown", nil) // the earlier faults' nodes have caught up
		n := d.nats[2]
		n.kill9()
		expectAlert(t, p, fault, "NATSNodeDown", nil)
		n.start(t)
		d.init(t)
		expectResolved(t, p, fault, "NATSNodeDown", nil)
	}
	// A keyworker dies; it comes back sealed (no PIN given); it is
	// unsealed with shares, as operations.md says.
	{
		const fault = "alerts: kill -9 keyworker, restart sealed"
		kw := d.service("keyworker-1")
		inst := map[string]string{"instance": d.metricsAddr[kw.name]}
		expectResolved(t, p, fault+" (before)", "SovkeysTargetDown", nil)
		expectResolved(t, p, fault+" (before)", "KeyworkerSealed", nil)
		kw.kill9()
		expectAlert(t, p, fault, "SovkeysTargetDown", inst)
		pinEnv := kw.env
		kw.env = withoutPIN(pinEnv)
		kw.start(t)
		expectResolved(t, p, fault, "SovkeysTargetDown", inst)
		expectAlert(t, p, fault, "KeyworkerSealed", map[string]string{"instance": d.metricsAddr[kw.name], "pool": "default"})
		// Shares of a wrong PIN first: the HSM refuses the login (it stays
		// in the 15 min window of HSMLoginFailures, so no resolution here).
		d.unseal(t, "not-the-"+tokenPIN)
		expectAlert(t, p, fault, "HSMLoginFailures", map[string]string{"instance": d.metricsAddr[kw.name], "pool": "default"})
		d.unseal(t, tokenPIN)
		kw.env = pinEnv // later restarts start unsealed again
		expectResolved(t, p, fault, "KeyworkerSealed", nil)
	}
	// The kill switch of the key store under load.
	{
		const fault = "alerts: kill switch engaged"
		expectResolved(t, p, fault+" (before)", "KillSwitchEngaged", nil)
		d.cli(t, nil, "killswitch", "engage", "--keystore", "/ct", "--reason", "alert test")
		expectAlert(t, p, fault, "KillSwitchEngaged", map[string]string{"scope": "keystore", "severity": "info"})
		// A release takes two security people (the cluster's quorum): the
		// first signature leaves it pending (exit status 3), the second,
		// by sec2, releases it.
		if out, err := d.run("killswitch", "release", "--keystore", "/ct"); err == nil || !strings.Contains(out, "waits for approval") {
			t.Fatalf("release by one person: %v\n%s", err, out)
		}
		release := d.cliAs(t, filepath.Join(filepath.Dir(d.opCreds), "sec2.creds"), "killswitch", "release", "--keystore", "/ct")
		if !strings.Contains(release, "approved_by") {
			t.Fatalf("second release signature: %s", release)
		}
		expectResolved(t, p, fault, "KillSwitchEngaged", nil)
	}
	// The only audit service stops: events wait, nothing is numbered.
	{
		const fault = "alerts: audit stopped"
		au := d.service("audit-0")
		expectResolved(t, p, fault+" (before)", "SovkeysServiceDown", nil)
		au.stop()
		expectAlert(t, p, fault, "SovkeysServiceDown", map[string]string{"role": "audit", "severity": "critical"})
		au.start(t)
		expectResolved(t, p, fault, "SovkeysServiceDown", nil)
	}
	t.Logf("alerts: the faults took %.0f s", time.Since(began).Seconds())
	// Every dashboard panel answers with data.
	exprs := dashboardExprs(t)
	for panel, expr := range exprs {
		testkit.CheckFor(t, 20*time.Second, 500*time.Millisecond, func() error {
			n, err := p.query(expr)
			if err == nil && n == 0 {
				err = fmt.Errorf("dashboard panel %q: %s returns no data", panel, expr)
			}
			return err
		})
	}
	t.Logf("alerts: all %d queries of the Grafana dashboard return data", len(exprs))
}

// withoutPIN is env minus the HSM PIN, so the keyworker starts sealed.
func withoutPIN(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "SOVKEYS_HSM_PIN=") {
			out = append(out, e)
		}
	}
	return out
}

// unseal splits pin into shares and submits two of them, as the share
// holders would.
func (d *deployment) unseal(t *testing.T, pin string) {
	t.Helper()
	split := exec.Command(d.bin, "unseal", "split", "--pool", "default", "--shares", "3", "--threshold", "2")
	split.Stdin = strings.NewReader(pin + "\n")
	out, err := split.Output()
	if err != nil {
		t.Fatalf("unseal split: %v", err)
	}
	var shares []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "sovkeys-share:") {
			shares = append(shares, f)
		}
	}
	if len(shares) < 2 {
		t.Fatalf("unseal split printed %d shares", len(shares))
	}
	d.cli(t, nil, "unseal", "--share", shares[0], "--share", shares[1])
}

// cliAs runs the CLI once with the credential creds and returns its output.
func (d *deployment) cliAs(t *testing.T, creds string, args ...string) string {
	t.Helper()
	cmd := exec.Command(d.bin, args...)
	cmd.Env = append(os.Environ(), "SOVKEYS_NATS_URL="+d.urls, "SOVKEYS_NATS_CREDS="+creds)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sovkeys %v as %s: %v\n%s", args, filepath.Base(creds), err, out)
	}
	return string(out)
}
