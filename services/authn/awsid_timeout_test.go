package authn

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

// An AWS endpoint that never answers gives a clear 503 once the budget is
// spent; the test only requires that verify returns (a hang fails it by
// the test timeout), never measures wall-clock time.
func TestAWSIdentityTimeouts(t *testing.T) {
	t.Parallel()
	cfg := AWSConfig{ServerID: testServerID, Timeout: 200 * time.Millisecond, CacheTTL: time.Minute, CacheSize: 10}
	for _, action := range []string{"GetCallerIdentity", "AssumeRole", "DescribeInstances"} {
		t.Run(action+" stalls", func(t *testing.T) {
			f := newAWSFixture(t, cfg)
			f.aws.Stall(action, true)
			_, _, err := f.verify(envFor(f.sign(t, f.aws.InstanceCredentials(testAccount, testRole, testInstance), testServerID, testVPC, time.Now()), testInstance, ""))
			wantTimeout(t, err)
		})
	}
	t.Run("sts accepts connections and never reads", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { _ = c.Close() })
			}
		}()
		f := newAWSFixture(t, cfg)
		// Both the instance and authn use the silent endpoint.
		hung := cfg
		hung.Region, hung.STSEndpoint, hung.EC2Endpoint = f.aws.Region, "http://"+ln.Addr().String(), f.aws.URL
		v, err := newAWSVerifier(context.Background(), hung, 5*time.Minute, Deps{AWSCredentials: staticProvider(f.aws.AddUser(selfAccount, "x"))},
			time.Now, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		f.v = v
		inst := f.aws.InstanceCredentials(testAccount, testRole, testInstance)
		id := signRaw(t, inst, hung.STSEndpoint+"/", "Action=GetCallerIdentity&Version=2011-06-15", f.aws.Region,
			map[string]string{"X-Sovkeys-Server-ID": testServerID}, time.Now())
		_, _, err = f.verify(envFor(id.Encode(), testInstance, ""))
		wantTimeout(t, err)
	})
	t.Run("the request deadline caps the budget", func(t *testing.T) {
		long := cfg
		long.Timeout = time.Minute
		f := newAWSFixture(t, long)
		f.aws.Stall("DescribeInstances", true)
		env := envFor(f.sign(t, f.aws.InstanceCredentials(testAccount, testRole, testInstance), testServerID, testVPC, time.Now()), testInstance, "")
		env.Deadline = f.clock.now().Add(300 * time.Millisecond)
		_, _, err := f.verify(env)
		wantTimeout(t, err)
	})
}

func wantTimeout(t *testing.T, err error) {
	t.Helper()
	wantAWSErr(t, err, ErrAWSUnavailable, shared.CodeDependencyTimeout)
	if !strings.Contains(shared.MessageOf(err), "did not answer within") {
		t.Fatalf("not a timeout: %v", err)
	}
}

func TestAWSConfigValidate(t *testing.T) {
	t.Parallel()
	good := AWSConfig{ServerID: "prod-eu", Region: "eu-west-1", Timeout: 2 * time.Second, CacheTTL: time.Minute, CacheSize: 10}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (AWSConfig{}).Validate(); err != nil {
		t.Fatalf("disabled config: %v", err)
	}
	for name, mut := range map[string]func(*AWSConfig){
		"server id":    func(c *AWSConfig) { c.ServerID = "has space" },
		"region":       func(c *AWSConfig) { c.Region = "" },
		"timeout":      func(c *AWSConfig) { c.Timeout = 0 },
		"ttl":          func(c *AWSConfig) { c.CacheTTL = time.Hour },
		"cache size":   func(c *AWSConfig) { c.CacheSize = 0 },
		"sts endpoint": func(c *AWSConfig) { c.STSEndpoint = "ftp://sts" },
		"sts query":    func(c *AWSConfig) { c.STSEndpoint = "https://sts.example/?x=1" },
		"ec2 endpoint": func(c *AWSConfig) { c.EC2Endpoint = "ec2.example" },
	} {
		t.Run(name, func(t *testing.T) {
			c := good
			mut(&c)
			if err := c.Validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestAWSDisabled(t *testing.T) {
	t.Parallel()
	s := &Service{}
	env := envFor("x", testInstance, "")
	_, err := s.volumeSecretAWS(context.Background(), env, &shared.AuditEvent{})
	wantAWSErr(t, err, ErrAWSDisabled, shared.CodeAuthenticationFailed)
}

func TestParseCaller(t *testing.T) {
	t.Parallel()
	for arn, ok := range map[string]bool{
		"arn:aws:sts::111122223333:assumed-role/app/i-0123":        true,
		"arn:aws-us-gov:sts::111122223333:assumed-role/app/i-0123": true,
		"arn:aws:iam::111122223333:user/bob":                       false,
		"arn:aws:sts::111122223333:federated-user/bob":             false,
		"arn:aws:sts::111122223333:assumed-role/app":               false,
		"arn:aws:sts::444455556666:assumed-role/app/i-0123":        false, // not the reported account
	} {
		if _, got := parseCaller(arn, "111122223333"); got != ok {
			t.Errorf("%s: %v, want %v", arn, got, ok)
		}
	}
}

func TestTTLCache(t *testing.T) {
	t.Parallel()
	c := newTTLCache[int, int](10)
	now := time.Now()
	c.put(1, 1, now, now.Add(time.Second))
	if v, ok := c.get(1, now); !ok || v != 1 {
		t.Fatal("missing live entry")
	}
	if _, ok := c.get(1, now.Add(time.Second)); ok {
		t.Fatal("expired entry returned")
	}
	c.put(2, 2, now, now) // already expired: not stored
	if c.len() != 0 {
		t.Fatalf("len %d", c.len())
	}
	for i := range 100 {
		c.put(i, i, now, now.Add(time.Minute))
		if c.len() > 10 {
			t.Fatalf("len %d after %d inserts", c.len(), i+1)
		}
	}
}
