package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// session is the TCP state of one exchange, on rawclient's side.
type session struct {
	c        *conn
	payload  []byte
	deadline time.Time
	ourMSS   uint16 // announced in the SYN
	mss      uint16 // the largest segment rawclient sends
	iss      uint32
	sndUna   uint32
	sndNxt   uint32
	rcvNxt   uint32
	resp     []byte // in-order data received, at most maxResponse bytes

	rto        time.Duration // payload retransmission timeout
	nextRexmit time.Time
}

// exchange performs the whole attack and reports what happened.
func exchange(cfg *config) (res result) {
	c, err := dial(cfg)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer c.close()
	s := &session{
		c:        c,
		payload:  cfg.payload,
		deadline: time.Now().Add(cfg.timeout),
		ourMSS:   ourMSS4,
		mss:      defaultMSS4,
		iss:      rand.Uint32(),
	}
	if cfg.src.Is6() {
		s.ourMSS, s.mss = ourMSS6, defaultMSS6
	}
	defer func() { res.Response = string(s.resp) }()

	if err := s.handshake(); err != nil {
		res.Error = err.Error()
		return res
	}
	res.SynAck = true
	if err := s.sendACK(); err != nil {
		res.Error = err.Error()
		return res
	}
	if err := s.sendPayload(); err != nil {
		res.Error = "payload: " + err.Error()
		return res
	}
	res.Sent = true
	s.sndNxt += uint32(len(s.payload))
	if err := s.readResponse(); err != nil {
		res.Error = err.Error()
	}
	return res
}

// handshake sends the SYN, again every synInterval, until the SYN-ACK
// acknowledging it arrives.
func (s *session) handshake() error {
	nextSYN := time.Now()
	for {
		if !time.Now().Before(nextSYN) {
			if err := s.c.send(flagSYN, s.iss, 0, s.ourMSS, nil); err != nil {
				return fmt.Errorf("SYN: %w", err)
			}
			nextSYN = time.Now().Add(synInterval)
		}
		seg, err := s.c.recv(earliest(s.deadline, nextSYN))
		switch {
		case errors.Is(err, errTimeout):
			if !time.Now().Before(s.deadline) {
				return errors.New("timeout waiting for SYN-ACK")
			}
			continue
		case err != nil:
			return fmt.Errorf("waiting for SYN-ACK: %w", err)
		}
		switch {
		case seg.flags&flagRST != 0 && seg.flags&flagACK != 0 && seg.ack == s.iss+1:
			return errors.New("connection refused: RST in reply to SYN")
		case seg.flags&(flagSYN|flagACK) == flagSYN|flagACK && seg.ack == s.iss+1:
			s.sndUna, s.sndNxt, s.rcvNxt = s.iss+1, s.iss+1, seg.seq+1
			if seg.mss != 0 {
				s.mss = min(seg.mss, s.ourMSS)
			}
			return nil
		}
	}
}

func (s *session) sendACK() error {
	if err := s.c.send(flagACK, s.sndNxt, s.rcvNxt, 0, nil); err != nil {
		return fmt.Errorf("ACK: %w", err)
	}
	return nil
}

// sendPayload sends the whole payload, from its start, in segments of at
// most the peer's MSS (retransmissions send it all again: it is small).
func (s *session) sendPayload() error {
	seq := s.iss + 1
	for p := s.payload; len(p) > 0; {
		n := min(len(p), int(s.mss))
		flags := uint8(flagACK)
		if n == len(p) {
			flags |= flagPSH
		}
		if err := s.c.send(flags, seq, s.rcvNxt, 0, p[:n]); err != nil {
			return err
		}
		seq += uint32(n)
		p = p[n:]
	}
	return nil
}

// readResponse reads the peer's data until its FIN, re-sending the payload
// with a doubling timeout until the peer acknowledges it.
func (s *session) readResponse() error {
	s.rto = dataRTO
	s.nextRexmit = time.Now().Add(s.rto)
	for {
		seg, err := s.c.recv(s.waitUntil())
		if errors.Is(err, errTimeout) {
			if !time.Now().Before(s.deadline) {
				return s.timedOut()
			}
			if err := s.sendPayload(); err != nil {
				return fmt.Errorf("payload retransmission: %w", err)
			}
			s.rto *= 2
			s.nextRexmit = time.Now().Add(s.rto)
			continue
		}
		if err != nil {
			return fmt.Errorf("waiting for the response: %w", err)
		}
		if done, err := s.handle(seg); done {
			return err
		}
	}
}

// waitUntil is how long to wait for the next segment: until the deadline,
// or the next retransmission while the payload is not all acknowledged.
func (s *session) waitUntil() time.Time {
	if seqLT(s.sndUna, s.sndNxt) {
		return earliest(s.deadline, s.nextRexmit)
	}
	return s.deadline
}

func (s *session) timedOut() error {
	// Best effort: do not leave the peer's side open.
	_ = s.c.send(flagRST|flagACK, s.sndNxt, s.rcvNxt, 0, nil)
	if len(s.resp) == 0 {
		return errors.New("timeout waiting for the response")
	}
	return errors.New("timeout waiting for FIN")
}

// handle processes one segment of the peer's response; done is true when
// the exchange is over (the peer's FIN, a RST or an error).
func (s *session) handle(seg *segment) (done bool, err error) {
	switch {
	case seg.flags&flagRST != 0:
		return true, errors.New("connection reset by peer")
	case seg.flags&flagSYN != 0:
		// Our ACK got lost and the SYN-ACK was repeated.
		err := s.sendACK()
		return err != nil, err
	}
	if seg.flags&flagACK != 0 && seqLT(s.sndUna, seg.ack) && seqLEQ(seg.ack, s.sndNxt) {
		s.sndUna = seg.ack
		s.rto = dataRTO
		s.nextRexmit = time.Now().Add(s.rto)
	}
	end := s.accept(seg)
	switch {
	case seg.flags&flagFIN != 0 && end == s.rcvNxt:
		s.rcvNxt++
		// Acknowledge the FIN and close our side in one segment.
		if err := s.c.send(flagFIN|flagACK, s.sndNxt, s.rcvNxt, 0, nil); err != nil {
			return true, fmt.Errorf("FIN: %w", err)
		}
		return true, nil
	case len(seg.payload) > 0 || seg.flags&flagFIN != 0:
		// New, duplicate or out-of-order data: (re-)acknowledge.
		err := s.sendACK()
		return err != nil, err
	}
	return false, nil
}

// accept keeps the in-order part of seg's data (it may overlap what was
// already received); anything beyond a gap is dropped and will be
// retransmitted by the peer. It returns the sequence number after seg's
// data.
func (s *session) accept(seg *segment) uint32 {
	end := seg.seq + uint32(len(seg.payload))
	if seqLEQ(seg.seq, s.rcvNxt) && seqLT(s.rcvNxt, end) {
		data := seg.payload[s.rcvNxt-seg.seq:]
		if room := maxResponse - len(s.resp); room > 0 {
			s.resp = append(s.resp, data[:min(len(data), room)]...)
		}
		s.rcvNxt = end
	}
	return end
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
