//! Test harness for integration tests: starts a real Warren in-process on 127.0.0.1:0, or
//! points at an external broker when `WARREN_TEST_AMQP_URL` is set (used to check that the
//! tests' expectations match a real RabbitMQ).
