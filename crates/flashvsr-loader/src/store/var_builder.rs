//! A candle-nn `VarBuilder` backend over a [`WeightStore`].

use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::WeightStore;

struct StoreBackend(Arc<WeightStore>);

impl SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        Ok(self.0.tensor_as(name, s.dims(), dtype, dev)?)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(self.0.tensor(name, dtype, dev)?)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// A `VarBuilder` reading from `store`; `get(shape, name)` reshapes by element count.
pub fn var_builder(
    store: Arc<WeightStore>,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(StoreBackend(store)), dtype, device.clone())
}

impl WeightStore {
    /// A candle-nn `VarBuilder` over this store; `get(shape, name)` reshapes by element count.
    pub fn var_builder(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> candle_nn::VarBuilder<'static> {
        var_builder(self.clone(), dtype, device)
    }
}
