package bpf

import "testing"

func TestJudgeSmoke(t *testing.T) {
	jp := loadJudge(t, judgeConfig{})
	c := newConn(jp)
	if denied := c.writeAll(t, "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: x\r\n\r\n"); !denied {
		t.Fatalf("token-less GET not denied: %s", c.summary())
	}
	c2 := newConn(jp)
	if denied := c2.writeAll(t, "G", "ET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nX-aws-ec2-metadata-", "Token: abc\r\n", "\r\n"); denied {
		t.Fatalf("token GET denied: %s", c2.summary())
	}
	t.Logf("%s%s sent=%q", c.summary(), c2.summary(), c2.sent)
}
