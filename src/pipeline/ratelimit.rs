//! A token bucket in place of WAL-E's `pv --rate-limit`: one limiter is shared
//! by every parallel upload of a command, so the limit is on the total rate.

use std::num::NonZeroU32;
use std::sync::Arc;

use futures_util::stream::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Governor};

use crate::ByteStream;

#[derive(Debug)]
pub struct RateLimiter {
    limiter: DefaultDirectRateLimiter,
    /// The most bytes one wait may ask for: a twentieth of a second's worth, so
    /// even short transfers are held close to the rate.
    burst: NonZeroU32,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> Arc<RateLimiter> {
        let rate = NonZeroU32::new(u32::try_from(bytes_per_second.max(1)).unwrap_or(u32::MAX))
            .expect("rate is at least 1");
        let burst = NonZeroU32::new((rate.get() / 20).max(1)).expect("burst is at least 1");
        Arc::new(RateLimiter {
            limiter: Governor::direct(Quota::per_second(rate).allow_burst(burst)),
            burst,
        })
    }

    /// Passes `input` through unchanged, no faster than the limit.
    pub fn limit(self: &Arc<Self>, input: ByteStream) -> ByteStream {
        let this = self.clone();
        input
            .then(move |chunk| {
                let this = this.clone();
                async move {
                    let chunk = chunk?;
                    let mut left = chunk.len();
                    while left > 0 {
                        let take = left.min(this.burst.get() as usize);
                        let cells = NonZeroU32::new(take as u32).expect("take > 0");
                        this.limiter
                            .until_n_ready(cells)
                            .await
                            .expect("never asks for more than the burst");
                        left -= take;
                    }
                    Ok(chunk)
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream;
    use std::time::Instant;

    fn chunks(total: usize, chunk: usize) -> ByteStream {
        stream::iter((0..total / chunk).map(move |_| Ok(Bytes::from(vec![7u8; chunk])))).boxed()
    }

    async fn drain(s: ByteStream) -> usize {
        s.map(|c| c.unwrap().len())
            .fold(0, |a, n| async move { a + n })
            .await
    }

    #[tokio::test]
    async fn three_mib_at_one_mib_per_second_takes_at_least_2_5_s() {
        let limiter = RateLimiter::new(1024 * 1024);
        let start = Instant::now();
        let n = drain(limiter.limit(chunks(3 * 1024 * 1024, 64 * 1024))).await;
        assert_eq!(n, 3 * 1024 * 1024, "data passes through unchanged in size");
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 2.5, "took only {took:.2} s");
    }

    #[tokio::test]
    async fn the_limit_is_shared_by_parallel_streams() {
        let limiter = RateLimiter::new(1024 * 1024);
        let start = Instant::now();
        let (a, b) = tokio::join!(
            drain(limiter.limit(chunks(1536 * 1024, 64 * 1024))),
            drain(limiter.limit(chunks(1536 * 1024, 64 * 1024)))
        );
        assert_eq!(a + b, 3 * 1024 * 1024);
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 2.5, "two streams together took only {took:.2} s");
    }
}
